"""``--compile``: whether to run the converted generator through ``torch.compile``, and where its
compiled kernels are kept.

``auto`` compiles on CUDA (the compiled forward was measured at about 3× the eager one there,
ResNet-9 on an H200). On a CPU it compiles a slide's model when what compiling saves on that
slide is at least twice what it costs: the slide's forwards (tiles to run × passes) times an
eager forward timed there, against the compile time and compiled forward this machine measured
the last time it compiled this model at this geometry (``History``, kept beside the kernels: a
second compile finds them cached and takes seconds), or a first guess from the machine of
docs/benchmarks.md before it ever has. Once compiled, a run stays compiled.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dn_cli.outputs import os_reason

CHOICES = ("auto", "on", "off")


def wanted(choice: str, device: torch.device) -> bool:
    """Whether to compile from the start: ``on``, or ``auto`` on CUDA (on a CPU ``auto`` decides
    slide by slide, :func:`worth_it`)."""
    return choice == "on" or (choice == "auto" and device.type == "cuda")


@dataclass(frozen=True)
class Costs:
    """What compiling costs and gives for one model at one geometry on one machine."""

    compile_s: float  # compiling the graphs a translation runs (collect and apply), first forwards included
    forward_s: float | None  # a compiled tile forward (apply pass), None where not measured
    cached: bool = False  # measured with the kernels already on disk


# Before this machine has measured its own: the 2-core machine of docs/benchmarks.md, bundled model,
# tiles of 512, kernels not yet cached ("--compile auto on a CPU").
FIRST_GUESS = Costs(compile_s=60.0, forward_s=None)
GUESSED_SPEEDUP = 1.3  # compiled over eager where the compiled forward was never timed here
PAYS = 2.0  # compile only when it saves at least this many times what it costs
# Fewer tile forwards are not weighed (nor is the model timed for them): the quickest compile
# measured here, 10 s with cached kernels, needs hundreds of forwards to be repaid twice.
MIN_FORWARDS = 64
CACHED_FRACTION = 0.25  # a compile that finds its kernels on disk, until one is measured


def worth_it(forwards: int, eager_forward_s: float, costs: Costs) -> tuple[bool, str]:
    """(compile?, why, in words) for a job of ``forwards`` tile forwards at ``eager_forward_s``
    seconds each eagerly."""
    speedup = eager_forward_s / costs.forward_s if costs.forward_s else GUESSED_SPEEDUP
    eager = forwards * eager_forward_s
    saved = eager - eager / speedup
    kind = "measured here" if costs is not FIRST_GUESS else "first guess"
    cached = ", kernels cached" if costs.cached else ""
    why = (
        f"{forwards} tile forwards ≈ {eager:.0f} s eager; compiling ({speedup:.2f}× faster, "
        f"{costs.compile_s:.0f} s to compile{cached}, {kind}) would save ≈ {saved:.0f} s"
    )
    return saved >= PAYS * costs.compile_s, why


class History:
    """What compiling cost on this machine, by model and geometry, kept in ``folder`` (the kernel
    cache: where the kernels are gone, so is what was learnt about them)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "dn-compile-history.json"

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def knows(self, key: str) -> bool:
        return key in self._read()

    def costs(self, key: str) -> Costs:
        """The latest measured costs for ``key``; kernels compiled before are cached, so a compile
        measured without them is expected to cost a fraction, until one with them is measured."""
        entry = self._read().get(key)
        if not entry:
            return FIRST_GUESS
        compile_s = entry.get("cached_s", entry["compile_s"] * CACHED_FRACTION)
        return Costs(compile_s=compile_s, forward_s=entry.get("forward_s"), cached=True)

    def record(self, key: str, measured: Costs) -> None:
        entries = self._read()
        entry = entries.get(key, {})
        entry["forward_s"] = round(measured.forward_s, 4)
        entry["cached_s" if measured.cached else "compile_s"] = round(measured.compile_s, 2)
        entry.setdefault("compile_s", entry.get("cached_s"))
        entries[key] = entry
        temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps(entries, indent=1))
            temporary.replace(self.path)  # runs sharing the cache never read half a file
        except OSError:
            temporary.unlink(missing_ok=True)  # a cache that cannot learn still compiles


class Clock:
    """The compiled forwards of one run, timed: the first of each graph compiles, the rest show
    the compiled speed (CPU only: a CUDA forward returns before it has run)."""

    def __init__(self) -> None:
        self.first: dict[bool, tuple[int, float]] = {}  # graph (collecting?) → (tiles, seconds)
        self.rest: dict[bool, list[float]] = {}  # graph → seconds per tile

    def add(self, collecting: bool, tiles: int, seconds: float) -> None:
        if collecting in self.first:
            self.rest.setdefault(collecting, []).append(seconds / tiles)
        else:
            self.first[collecting] = (tiles, seconds)

    def costs(self, cached: bool) -> Costs | None:
        """Compile time and compiled forward as measured, or None before the graphs ran twice."""
        if set(self.rest) != set(self.first) or not self.rest.get(False):
            return None
        per_tile = {graph: statistics.median(times) for graph, times in self.rest.items()}
        compile_s = sum(max(0.0, s - tiles * per_tile[g]) for g, (tiles, s) in self.first.items())
        return Costs(compile_s=compile_s, forward_s=per_tile[False], cached=cached)


def keep_kernels_on_disk(warn: Callable[[str], None]) -> Path:
    """Compiled kernels go to the user's cache folder (``$XDG_CACHE_HOME/dn/inductor``), so a
    second run starts without compiling again; a folder set by the user is kept. Where it cannot
    be written (a read-only home, ``XDG_CACHE_HOME`` naming a file) kernels go to a temporary
    folder removed at exit, after one ``warn``: torch would otherwise fail as it is imported."""
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or str(_cache_home() / "dn" / "inductor")
    try:
        Path(cache).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=cache).close()
    except OSError as e:
        fallback = tempfile.mkdtemp(prefix="dn-kernels-")
        atexit.register(shutil.rmtree, fallback, ignore_errors=True)
        warn(f"compiled kernels cannot be kept in {cache} ({os_reason(e)}): this run compiles without a disk cache")
        cache = fallback
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    os.environ.setdefault("TRITON_CACHE_DIR", str(Path(cache) / "triton"))  # CUDA's kernels, not in ~/.triton
    return Path(cache)


def _cache_home() -> Path:
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"])
    try:
        return Path.home() / ".cache"
    except RuntimeError:  # no home at all: the temporary folder then
        return Path(tempfile.gettempdir())
