"""Load a generator from a model file without running code from it, whatever its family.

State dicts (plain, ``module.``-prefixed, or wrapped in a training checkpoint) are read with
``torch.load(weights_only=True)``; TorchScript archives with ``torch.jit.load`` and rebuilt from
their weights. The family is detected from the keys by the rules in ``configs/*.toml`` (one
file per family, naming its builder), the network is built and loaded strictly. A pickled
``nn.Module`` is loaded only with ``trust_code`` (unpickling it can run arbitrary code).
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.resources
import re
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import torch
from torch import nn

from dn_cli.errors import ModelError, first_line, plural

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

StateDict = dict[str, torch.Tensor]
# Where training checkpoints keep the generator's weights, most specific first.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "netG_A", "netG", "G_A", "G", "generator", "model", "net")


@dataclass(frozen=True)
class Family:
    """A generator family as described by its ``configs/<name>.toml``."""

    name: str
    description: str
    source: str
    build: Callable[..., nn.Module]
    infer: Callable[[StateDict], dict | None]
    adapt: Callable[[StateDict], StateDict] | None  # the checkpoint's tensors as the builder's module takes them
    fixed: dict
    stride: int | None
    stride_log2: str | None
    require: list[str]
    forbid: list[str]
    keys: list[str]

    def detects(self, sd: StateDict) -> bool:
        return (
            all(any(fnmatchcase(k, p) for k in sd) for p in self.require)
            and not any(fnmatchcase(k, p) for k in sd for p in self.forbid)
            and not self.unfit(sd)
        )

    def unfit(self, sd: StateDict) -> list[str]:
        """Keys outside this family's vocabulary."""
        return [k for k in sd if not any(fnmatchcase(k, p) for p in self.keys)]

    def total_stride(self, params: dict) -> int:
        return self.stride if self.stride is not None else 2 ** params[self.stride_log2]


@dataclass
class Generator:
    """A loaded generator in eval mode, with what the pipeline and ``dn info`` need to know."""

    module: nn.Module
    family: str
    params: dict
    stride: int
    file_format: str = "state dict"
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # shown by ``dn translate`` on stderr
    name: str = "the model"  # how messages name it: its file's name

    @functools.cached_property
    def _probe(self) -> tuple[int, int]:
        return probe(self.module, self.stride)

    @property
    def min_size(self) -> int:
        """The smallest input side the network runs on (a multiple of its stride)."""
        return self._probe[0]

    @property
    def out_channels(self) -> int:
        return self._probe[1]

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    @property
    def norm_layers(self) -> int:
        return sum(isinstance(m, nn.InstanceNorm2d) for m in self.module.modules())


def _resolve(reference: str) -> Callable:
    module, _, attr = reference.partition(":")
    return getattr(importlib.import_module(module), attr)


@functools.cache
def families() -> tuple[Family, ...]:
    """Every family described under ``configs/``, by name."""
    found = []
    for entry in sorted(importlib.resources.files("dn_cli.configs").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            c = tomllib.loads(entry.read_text(encoding="utf-8"))
            d = c["detect"]
            found.append(
                Family(
                    c["name"],
                    c["description"],
                    c["source"],
                    _resolve(c["builder"]),
                    _resolve(c["infer"]),
                    _resolve(c["adapt"]) if "adapt" in c else None,
                    c.get("params", {}),
                    c.get("stride"),
                    c.get("stride_log2"),
                    d["require"],
                    d.get("forbid", []),
                    d["keys"],
                )
            )
    return tuple(found)


def family_named(name: str) -> Family:
    for family in families():
        if family.name == name:
            return family
    raise ModelError(f"unknown --arch {name!r}; known: {', '.join(f.name for f in families())}")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def _is_pickle(path: Path) -> bool:
    """Whether a file is a bare pickle (protocol 2 or later), not a zip archive of one."""
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _check_declared_sizes(path: Path) -> None:
    """Refuse an archive that would inflate far beyond its size, before anything is unpacked:
    PyTorch stores its tensors uncompressed, so a checkpoint holds about what it weighs."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ModelError(f"cannot read {path}: a damaged archive ({first_line(e)})") from e
    weight = path.stat().st_size
    if declared > 4 * weight + (64 << 20):
        raise ModelError(
            f"{path} would unpack {declared / 2**30:.1f} GB from {weight / 2**20:.1f} MB: "
            "not a PyTorch checkpoint (they are stored uncompressed), refused before unpacking"
        )


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _read(path: Path, trust_code: bool) -> tuple[object, str]:
    """The object in ``path`` and a description of its format."""
    if path.is_dir():
        raise ModelError(f"{path} is a folder, not a model file")
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    _check_declared_sizes(path)
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # torch.jit.load is deprecated, still the way to read these
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(str(path), map_location="cpu"), "TorchScript"
        except Exception as e:
            raise ModelError(f"cannot load {path} as TorchScript: {first_line(e)}") from e
    try:
        with warnings.catch_warnings():  # the safe unpickler warns about protocols before refusing them
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=not trust_code), "state dict"
    except (AttributeError, ImportError) as e:  # trusted: a pickled class that is not importable here
        why = re.sub(r" from '[^']*'", "", first_line(e))  # without the module's file: a path of this machine
        raise ModelError(
            f"{path} pickles a whole model whose class cannot be imported here ({why}): "
            "in the training code, save model.state_dict() instead and load that"
        ) from e
    except Exception as e:  # torch raises many types for foreign or truncated files
        named = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if named or _is_pickle(path):  # a pickle the safe loader refuses: code to run, or opcodes it does not take
            what = f"pickled Python code ({named[1]})" if named else "pickled Python objects"
            raise ModelError(
                f"{path} holds {what}, not only weights; loading it would run code from the file: "
                "--trust-model-code does so, only for a file from a source you trust"
            ) from e
        raise ModelError(f"cannot read {path}: not a PyTorch checkpoint, or truncated") from e


def _unwrap(obj, path: Path) -> tuple[StateDict | None, nn.Module | None, str | None]:
    """(state dict, module, wrapper key) from what a model file held."""
    if isinstance(obj, nn.Module):
        return obj.state_dict(), obj, None
    if _is_state_dict(obj):
        return obj, None, None
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if _is_state_dict(obj.get(key)) or isinstance(obj.get(key), nn.Module):
                sd, module, _ = _unwrap(obj[key], path)
                return sd, module, key
        raise ModelError(f"{path} is a dict without a state dict (keys: {', '.join(map(str, list(obj)[:8]))})")
    raise ModelError(f"{path} holds a {type(obj).__name__}, not a model")


def _strip_prefix(sd: StateDict) -> StateDict:
    # Checkpoints saved from nn.DataParallel / DistributedDataParallel prefix every key.
    return {k.removeprefix("module."): v for k, v in sd.items()}


RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _split_running_stats(sd: StateDict) -> tuple[StateDict, list[str]]:
    """The state dict without InstanceNorm running statistics, and the keys taken out.

    Every family normalises with InstanceNorm only, so these keys come from InstanceNorm: saved
    by PyTorch < 0.4 (which recorded them unused; the CycleGAN code drops them on load too), or
    by a model trained with ``track_running_stats=True`` (then with ``num_batches_tracked``).
    """
    dropped = [k for k in sd if k.rpartition(".")[2] in RUNNING_STATS]
    return {k: v for k, v in sd.items() if k not in dropped}, dropped


def _listed(keys: list[str], limit: int = 4) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def build_generator(family: Family, sd: StateDict, source: str) -> Generator:
    """Build ``family`` with parameters read from ``sd`` and load ``sd`` strictly."""
    if family.adapt is not None:
        sd = family.adapt(sd)
    params = family.infer(sd)
    if params is None:
        raise ModelError(f"{source} is not a {family.name} state dict ({family.description})")
    params = {**params, **family.fixed}
    module = family.build(**params)
    expected = module.state_dict()
    problems = []
    if missing := [k for k in expected if k not in sd]:
        problems.append(f"missing keys {_listed(missing)}")
    if unexpected := [k for k in sd if k not in expected]:
        problems.append(f"unexpected keys {_listed(unexpected)}")
    if mismatched := [k for k in expected if k in sd and sd[k].shape != expected[k].shape]:
        problems.append(f"wrong shapes for {_listed(mismatched)}")
    if problems:
        raise ModelError(f"{source} does not match {family.name} {params}: {'; '.join(problems)}")
    module.load_state_dict(sd, strict=True)
    module.eval().requires_grad_(False)
    return Generator(module, family.name, params, family.total_stride(params))


def _no_family_error(sd: StateDict, source: str) -> ModelError:
    names = ", ".join(f.name for f in families())

    def absent(f: Family) -> list[str]:
        return [p for p in f.require if not any(fnmatchcase(k, p) for k in sd)]

    # Closest: most keys in its vocabulary, then the larger share of its required keys present.
    closest = max(families(), key=lambda f: (len(sd) - len(f.unfit(sd)), 1 - len(absent(f)) / len(f.require)))
    unfit = closest.unfit(sd)
    why = f"keys that do not fit: {_listed(unfit)}" if unfit else f"no keys like {_listed(absent(closest))}"
    return ModelError(
        f"{source} is not a generator of a known family ({names}); closest is {closest.name}, but it has {why}"
    )


def _probe_stride(module: nn.Module) -> int:
    """Total stride of an arbitrary generator: input size over its smallest feature map."""
    sizes = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape[-1]))
        for m in module.modules()
        if not list(m.children())
    ]
    try:
        with torch.no_grad():
            module(torch.zeros(1, 3, 512, 512))
    finally:
        for hook in hooks:
            hook.remove()
    return max(1, 512 // min(s for s in sizes if s > 0))  # an upsampler's maps may all be larger


def probe(module: nn.Module, stride: int, tries: int = 8) -> tuple[int, int]:
    """(smallest input side, output channels) of a generator: forwards on growing square inputs.

    Reflection padding needs feature maps larger than the pad, so the smallest input that runs
    is often a few strides (8 pixels for a ResNet generator of stride 4).
    """
    error: Exception | None = None
    for size in range(stride, stride * tries + 1, stride):
        try:
            with torch.inference_mode():
                shape = module(torch.zeros(1, 3, size, size)).shape
        except Exception as e:  # too small for some layer, or not runnable at all
            error = e
            continue
        if tuple(shape[-2:]) != (size, size):  # an upsampler, or valid convolutions: tiles would not fit together
            raise ModelError(
                f"the model outputs {shape[-1]} × {shape[-2]} pixels for a {size} × {size} input: "
                "dn needs a generator whose output is the size of its input"
            )
        return size, shape[1]
    raise ModelError(f"the model does not run on inputs up to {stride * tries} pixels: {first_line(error)}")


def _check(generator: Generator, source: str) -> None:
    """Refuse a generator dn cannot use, before any slide is opened."""
    first = next((m for m in generator.module.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first.in_channels != 3:
        raise ModelError(f"{source} expects {plural(first.in_channels, 'input channel')}; dn translates RGB images (3)")
    tensors = {**dict(generator.module.named_parameters()), **dict(generator.module.named_buffers())}
    if broken := [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]:
        raise ModelError(f"{source} has NaN or infinite weights ({_listed(broken, 2)}): the checkpoint is broken")
    try:
        channels = generator.out_channels  # the first forward: it probes the output's size too
    except ModelError as e:
        raise ModelError(f"{source}: {e}") from e
    if channels != 3:
        raise ModelError(f"{source} outputs {plural(generator.out_channels, 'channel')}; dn writes RGB images (3)")


def load_generator(path: Path, arch: str | None = None, trust_code: bool = False) -> Generator:
    """Load the generator in ``path``; ``arch`` forces a family instead of detecting it."""
    obj, file_format = _read(path, trust_code)
    sd, module, wrapper = _unwrap(obj, path)
    sd, running_stats = _split_running_stats(_strip_prefix(sd))
    source = str(path)
    family = family_named(arch) if arch else next((f for f in families() if f.detects(sd)), None)
    if family is not None:
        generator = build_generator(family, sd, source)
    elif isinstance(module, nn.Module) and not isinstance(module, torch.jit.ScriptModule):
        # A trusted pickled module of no known family: convert it as it is.
        module.eval().requires_grad_(False)
        generator = Generator(module, type(module).__name__, {}, _probe_stride(module))
    else:
        raise _no_family_error(sd, source)
    generator.file_format = "pickled module" if module is not None and file_format != "TorchScript" else file_format
    if wrapper:
        generator.notes.append(f"weights from the checkpoint's {wrapper!r} entry")
    _warn_about_norms(generator, path.name, running_stats)
    generator.name = path.name
    _check(generator, source)
    return generator


def _warn_about_norms(generator: Generator, name: str, running_stats: list[str]) -> None:
    """Say what DN will not do as the model's training did, or at all."""
    tracked = any(isinstance(m, nn.InstanceNorm2d) and m.track_running_stats for m in generator.module.modules())
    if tracked or any(k.endswith(".num_batches_tracked") for k in running_stats):
        generator.warnings.append(
            f"{name} was trained with InstanceNorm running averages (track_running_stats=True); "
            "dn normalises with instance statistics, as in training, so outputs differ from the model's eval mode"
        )
    elif running_stats:
        generator.notes.append(f"ignored {len(running_stats)} unused InstanceNorm running statistics (PyTorch < 0.4)")
    if generator.norm_layers == 0:
        generator.warnings.append(f"{name} has no InstanceNorm layers: DN changes nothing")


def generator_of_module(module: nn.Module, arch: str | None = None) -> Generator:
    """A live generator (a Python caller's) as dn runs it: a copy, on the CPU in eval mode (the
    caller's is left as it is); its family detected from its weights as a file's would be
    (``arch`` forces one), for the stride and what ``dn info`` says, else its stride probed.
    Checked as a loaded file is."""
    if isinstance(module, torch.jit.ScriptModule) or not isinstance(module, nn.Module):
        raise ModelError(
            f"{type(module).__name__} is not a torch.nn.Module dn can convert (TorchScript: pass its file)"
        )
    name = type(module).__name__
    sd, running_stats = _split_running_stats(dict(module.state_dict()))
    family = family_named(arch) if arch else next((f for f in families() if f.detects(sd)), None)
    params = family.infer(family.adapt(sd) if family.adapt else sd) if family is not None else None
    module = copy.deepcopy(module).cpu().eval().requires_grad_(False)
    if family is not None and params is not None:
        params = {**params, **family.fixed}
        generator = Generator(module, family.name, params, family.total_stride(params), file_format="module")
    else:
        generator = Generator(module, name, {}, _probe_stride(module), file_format="module")
    _warn_about_norms(generator, name, running_stats)
    generator.name = name
    _check(generator, name)
    return generator
