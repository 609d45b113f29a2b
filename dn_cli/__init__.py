"""dn: translate gigapixel images tile by tile with Dense Normalization (seams measured: docs/quality.md).

The Python face (docs/python-api.md)::

    import dn_cli as dn

    model = dn.load_model("he2ihc.pt")          # or a torch.nn.Module, or None: the demo model
    out = dn.translate_array(region, model)     # RGB uint8 in, the same shape out
    result = dn.translate_slide("a.svs", "a.tif", model)
    results = dn.translate_slides("slides/", "out/", model, devices=["cuda:0", "cuda:1"])

Loaded on first use, so ``import dn_cli`` stays quick.
"""

import dn_cli.huge_pages  # noqa: F401  (before torch: it reads the setting at its first allocation)

__version__ = "0.1.0"

_FACE = {
    "load_model": "dn_cli.app.model",
    "Model": "dn_cli.app.model",
    "Runner": "dn_cli.api",
    "translate_array": "dn_cli.api",
    "translate_slide": "dn_cli.api",
    "translate_slides": "dn_cli.api",
    "SlideResult": "dn_cli.app.results",
    "Status": "dn_cli.app.results",
    "DnError": "dn_cli.errors",
    "InputError": "dn_cli.errors",
    "OutputError": "dn_cli.errors",
    "ModelError": "dn_cli.errors",
    "GeometryError": "dn_cli.errors",
    "DeviceMemoryError": "dn_cli.errors",
}
__all__ = ["__version__", *_FACE]


def __getattr__(name: str):
    if name in _FACE:
        import importlib

        return getattr(importlib.import_module(_FACE[name]), name)
    raise AttributeError(f"module 'dn_cli' has no attribute {name!r}")
