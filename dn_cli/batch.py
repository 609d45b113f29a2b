"""Which slides a batch translates and where each output goes: pure path bookkeeping."""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

from dn_cli.errors import DnError

# What a folder is searched for unless --pattern says otherwise: slide formats OpenSlide reads,
# and ordinary images.
DEFAULT_PATTERNS = (
    "*.svs",
    "*.tif",
    "*.tiff",
    "*.ndpi",
    "*.vms",
    "*.vmu",
    "*.scn",
    "*.mrxs",
    "*.svslide",
    "*.bif",
    "*.dcm",
    "*.png",
    "*.jpg",
    "*.jpeg",
)


def _matches(path: Path, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(path.name.lower(), p.lower()) for p in patterns)


def _in_folder(folder: Path, patterns: tuple[str, ...], recursive: bool) -> list[Path]:
    found: list[Path] = []
    entries = sorted(folder.iterdir())
    names = {e.name for e in entries}
    dicom_taken = False
    for entry in entries:
        if entry.is_dir():
            # An MRXS slide's data folder sits beside X.mrxs: it is part of that slide.
            if recursive and f"{entry.name}.mrxs" not in names:
                found += _in_folder(entry, patterns, recursive)
        elif _matches(entry, patterns) and not entry.name.startswith("."):
            # The files of a DICOM series are one slide: OpenSlide opens it from any of them.
            if entry.suffix.lower() == ".dcm":
                if dicom_taken:
                    continue
                dicom_taken = True
            found.append(entry)
    return found


def expand_inputs(
    paths: list[Path], *, recursive: bool = False, patterns: tuple[str, ...] = DEFAULT_PATTERNS
) -> list[Path]:
    """Files as given, folders searched for ``patterns``; sorted, each once."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += _in_folder(path, patterns, recursive)
        else:
            found.append(path)  # a missing file fails on its own, with the others unaffected
    return sorted(dict.fromkeys(found))


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` (1 ≤ K ≤ N) → (K, N)."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise DnError(f"--shard takes K/N, e.g. 2/8, not {text!r}") from None
    if not 1 <= k <= n:
        raise DnError(f"--shard {text}: K must be between 1 and N")
    return k, n


def shard(items: list[Path], k: int, n: int) -> list[Path]:
    """Every N-th item from the K-th: shards of a sorted list are disjoint, cover it, and stay balanced."""
    return items[k - 1 :: n]


def output_for(source: Path, folder: Path, suffix: str = ".tif") -> Path:
    """The output of ``source`` in ``folder``: its name with ``suffix``."""
    return folder / f"{source.stem}{suffix}"
