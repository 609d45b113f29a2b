"""``--compile``: whether to run the converted generator through ``torch.compile``, and where its
compiled kernels are kept.

``auto`` compiles on CUDA only: there the compiled forward was measured at about 3× the eager
one (ResNet-9, H200), while on a CPU the compile itself (tens of seconds on 2 cores) outweighs
what it saves on all but long runs (docs/benchmarks.md, "The DN layer compiled").
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

CHOICES = ("auto", "on", "off")


def wanted(choice: str, device: torch.device) -> bool:
    return choice == "on" or (choice == "auto" and device.type == "cuda")


def keep_kernels_on_disk() -> None:
    """Compiled kernels go to the user's cache folder (``$XDG_CACHE_HOME/dn/inductor``), so a
    second run starts without compiling again; a folder set by the user is left as it is."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dn" / "inductor"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))
