"""``--compile``: whether to run the converted generator through ``torch.compile``, and where its
compiled kernels are kept.

``auto`` compiles on CUDA only: there the compiled forward was measured at about 3× the eager
one (ResNet-9, H200), while on a CPU the compile itself (tens of seconds on 2 cores) outweighs
what it saves on all but long runs (docs/benchmarks.md, "The DN layer compiled").
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from dn_cli.outputs import os_reason

CHOICES = ("auto", "on", "off")


def wanted(choice: str, device: torch.device) -> bool:
    return choice == "on" or (choice == "auto" and device.type == "cuda")


def keep_kernels_on_disk(warn: Callable[[str], None]) -> None:
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


def _cache_home() -> Path:
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"])
    try:
        return Path.home() / ".cache"
    except RuntimeError:  # no home at all: the temporary folder then
        return Path(tempfile.gettempdir())
