"""The Python face of dn: ``import dn_cli as dn``. Documented in docs/python-api.md.

Every function runs what ``dn translate`` runs — the same pipeline, the same defaults, the same
safety for files — and prints nothing: warnings go to ``logging.getLogger("dn")``, progress to
``on_progress(label, tiles_done, tiles_total)``, bad input raises ``DnError`` with the message
the command prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import fields
from pathlib import Path

import numpy as np
from torch import nn

from dn_cli.app.array import translate_pixels
from dn_cli.app.events import Logged
from dn_cli.app.execute import make_runner, resolved, run_request
from dn_cli.app.model import Model, load_model
from dn_cli.app.request import plan_request, settings_conflict
from dn_cli.app.results import SlideResult
from dn_cli.app.settings import Run, Settings
from dn_cli.errors import DnError

ModelLike = Model | str | Path | nn.Module | None
SETTINGS = {f.name for f in fields(Settings)}


class Runner:
    """A model made ready on one device, for many calls: converted (and compiled) once.

    Args:
        model: a model file, a live ``torch.nn.Module``, a loaded ``Model``, or None for the demo model.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        precision: ``auto`` (fp16 on CUDA), ``fp32``, ``fp16`` or ``bf16``; statistics stay float32.
        compile: ``off``, ``on`` or ``auto`` (on CUDA; on a CPU slide by slide, where it pays).
    """

    def __init__(
        self,
        model: ModelLike = None,
        *,
        device: str = "auto",
        precision: str = "auto",
        compile: str = "off",
        arch: str | None = None,
        trust_code: bool = False,
    ) -> None:
        self.model = load_model(model, arch=arch, trust_code=trust_code)
        self.compile = compile
        self.tiles = make_runner(self.model, device, precision, compile, Logged())

    @property
    def device(self) -> str:
        return str(self.tiles.device)

    def translate_array(self, image, **options) -> np.ndarray:
        """:func:`translate_array` on this runner."""
        settings = resolved(_settings(options, compile_model=self.compile), self.model)
        return translate_pixels(image, self.tiles, settings, Logged())

    def translate_slide(self, source, output, **options) -> SlideResult:
        """:func:`translate_slide` on this runner."""
        return _translate([Path(source)], Path(output), self.model, runner=self, **options)[0]

    def translate_slides(self, inputs, output_folder, **options) -> list[SlideResult]:
        """:func:`translate_slides` on this runner (one device: ``devices`` is not taken)."""
        return _translate(_paths(inputs), Path(output_folder), self.model, runner=self, folder=True, **options)


def translate_array(
    image: np.ndarray,
    model: ModelLike | Runner = None,
    *,
    norm: str = "dn",
    tile_size: int = 512,
    margin: int | None = None,
    tissue: bool = True,
    device: str = "auto",
    precision: str = "auto",
    compile: str = "off",
    **options,
) -> np.ndarray:
    """The translation of an RGB uint8 array ``(height, width, 3)``, of the same shape: tiles, DN and
    glass as for a slide. ``tissue``: skip glass tiles (filled with the model's glass). Other
    options: ``batch_size``, ``min_tissue``, ``arch``, ``trust_code``."""
    runner = _runner(model, device, precision, compile, options)
    return runner.translate_array(image, policy=norm, tile_size=tile_size, margin=margin, tissue=tissue, **options)


def translate_slide(
    source: str | Path,
    output: str | Path,
    model: ModelLike | Runner = None,
    *,
    device: str = "auto",
    overwrite: bool = False,
    **options,
) -> SlideResult:
    """Translate one slide or image into ``output`` (a ``.tif`` pyramid, ``.png`` or ``.jpg``; a
    folder for ``NAME.tif``), as ``dn translate SOURCE -o OUTPUT`` does: published whole or not at
    all, with its provenance record; an existing output is refused (DnError) unless ``overwrite``.
    Options are ``dn translate``'s, named as in Python (``norm``, ``tile_size``, ``level``,
    ``mpp``, ``tissue``, ``preview``, ``compression``, ``format``, ``precision``, ``compile``…)."""
    if Path(source).is_dir():
        raise DnError(f"{source} is a folder: translate_slides translates the slides in a folder")
    runner = model if isinstance(model, Runner) else None
    return _translate(
        [Path(source)],
        Path(output),
        _model(model, options),
        runner=runner,
        device=device,
        overwrite=overwrite,
        **options,
    )[0]


def translate_slides(
    inputs: str | Path | Iterable[str | Path],
    output_folder: str | Path,
    model: ModelLike | Runner = None,
    *,
    devices: list[str] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    **options,
) -> list[SlideResult]:
    """Translate every slide of ``inputs`` (files, or folders searched as ``dn translate`` searches
    them) into ``output_folder``, one result per input in the order they were run (biggest first);
    a slide's failure is its result's ``error``, the others go on. ``devices``: one worker process
    each (``["cuda:0", "cuda:1"]``)."""
    runner = model if isinstance(model, Runner) else None
    return _translate(
        _paths(inputs),
        Path(output_folder),
        _model(model, options),
        runner=runner,
        folder=True,
        devices=devices,
        on_progress=on_progress,
        **options,
    )


def _paths(inputs) -> list[Path]:
    return [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]


def _model(model: ModelLike | Runner, options: dict) -> Model:
    """The model, ``arch`` and ``trust_code`` taken out of ``options`` (a runner's model is loaded)."""
    arch, trust_code = options.pop("arch", None), options.pop("trust_code", False)
    return model.model if isinstance(model, Runner) else load_model(model, arch=arch, trust_code=trust_code)


def _runner(model, device: str, precision: str, compile: str, options: dict) -> Runner:
    loaded = _model(model, options)
    return model if isinstance(model, Runner) else Runner(loaded, device=device, precision=precision, compile=compile)


def _settings(options: dict, **given) -> Settings:
    """Settings from keyword options (``norm`` for ``policy``, ``compile`` for ``compile_model``);
    an unknown name is a TypeError, as for any function."""
    renamed = {"norm": "policy", "compile": "compile_model"}
    chosen = {renamed.get(k, k): v for k, v in options.items()} | given
    if unknown := sorted(set(chosen) - SETTINGS):
        raise TypeError(f"unexpected option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
    return Settings(**chosen)


def _translate(
    paths: list[Path],
    output: Path,
    model: Model,
    *,
    runner: Runner | None = None,
    folder: bool = False,
    device: str = "auto",
    devices: list[str] | None = None,
    precision: str = "auto",
    overwrite: bool = False,
    fail_fast: bool = False,
    on_progress: Callable[[str, int, int], None] | None = None,
    recursive: bool = False,
    patterns: tuple[str, ...] = (),
    shard: tuple[int, int] | None = None,
    format: str = "tiff",
    preview: str | Path | None = None,
    tissue_mask: str | Path | None = None,
    **options,
) -> list[SlideResult]:
    started = time.time()
    preview = None if preview is None else Path(preview)
    tissue_mask = None if tissue_mask is None else Path(tissue_mask)
    if format not in ("tiff", "ome-tiff"):
        raise DnError(f"format {format!r}: tiff or ome-tiff")
    if runner is not None:
        options.setdefault("compile", runner.compile)
    settings = _settings(options, ome=format == "ome-tiff")
    if why := settings_conflict(settings.level, settings.mpp, settings.tissue, tissue_mask):
        raise DnError(why)
    ask = {"recursive": recursive, "patterns": tuple(patterns), "ome": settings.ome, "shard_of": shard}
    folders = frozenset({"output"} if folder else ())
    request = plan_request(paths, output, **ask, preview=preview, tissue_mask=tissue_mask, folders=folders)
    run = Run(model, settings, started, overwrite=overwrite, fail_fast=fail_fast)
    events = Logged(on_progress)
    tiles = runner.tiles if runner is not None else None
    return run_request(request, run, events, runner=tiles, device=device, devices=devices, precision=precision)
