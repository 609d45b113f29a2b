"""Which slides a batch translates and where each output goes: path bookkeeping, no image I/O
(the picture suffixes come from ``image_io``, which writes them)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from dn_cli.dicom import series as dicom_series
from dn_cli.errors import DnError
from dn_cli.image_io import PICTURE_SUFFIXES
from dn_cli.provenance import sidecar_path

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


def _in_folder(
    folder: Path, patterns: tuple[str, ...], recursive: bool, skip: set[Path], seen: set[Path]
) -> list[tuple[Path, str]]:
    """(file, output stem) of every input in ``folder``."""
    seen.add(folder.resolve())
    found: list[tuple[Path, str]] = []
    entries = sorted(folder.iterdir())
    names = {e.name for e in entries}
    dicom: list[Path] = []
    for entry in entries:
        if entry.is_dir():
            # An MRXS slide's data folder sits beside X.mrxs: it is part of that slide.
            # Each real folder once (symlink loops), and never the output folder inside an input.
            real = entry.resolve()
            if recursive and f"{entry.name}.mrxs" not in names and real not in seen and real not in skip:
                found += _in_folder(entry, patterns, recursive, skip, seen)
        elif _matches(entry, patterns) and not entry.name.startswith("."):
            if entry.suffix.lower() == ".dcm":
                dicom.append(entry)
            else:
                found.append((entry, entry.stem))
    # The files of a DICOM series are one slide (OpenSlide opens it from any of them); a flat
    # export holds several series.
    return found + dicom_series(dicom)


def expand_inputs(
    paths: list[Path],
    *,
    recursive: bool = False,
    patterns: tuple[str, ...] = DEFAULT_PATTERNS,
    skip: Path | None = None,
) -> list[tuple[Path, Path, str]]:
    """(file, folder of its output relative to ``-o``, output stem) for files as given and files found
    in folders (a DICOM series is named after its slide label, see ``dicom.series``).

    A file found in a folder keeps its place below that folder (``sub/x.svs`` → ``sub``), so
    files of the same name in different subfolders get different outputs; a file given itself
    has its output directly in ``-o``. Folders are searched for ``patterns`` (each real folder
    once, ``skip`` never); the result is sorted by path, each file once.
    """
    found: dict[str, tuple[Path, Path, str]] = {}
    skipped = {skip.resolve()} if skip is not None else set()
    for path in paths:
        if path.is_dir():
            for file, stem in _in_folder(path, patterns, recursive, skipped, set()):
                found.setdefault(os.path.realpath(file), (file, file.parent.relative_to(path), stem))
        else:  # a missing file fails on its own, with the others unaffected
            found.setdefault(os.path.realpath(path), (path, Path(), path.stem))
    return sorted(found.values())


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` (0 ≤ K < N, counted from 0 like job array indices) → (K, N)."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise DnError(f"--shard takes K/N, e.g. 0/8, not {text!r}") from None
    if n < 1:
        raise DnError(f"--shard {text}: N must be at least 1")
    if not 0 <= k < n:
        raise DnError(f"--shard {text}: K counts from 0 and must be 0 to {n - 1} (as --array=0-{n - 1} gives)")
    return k, n


def input_bytes(path: Path) -> int:
    """An input's size on disk (a MIRAX slide with its data folder); 0 if it cannot be read."""
    try:
        size = path.stat().st_size
        if path.suffix.lower() == ".mrxs" and (data := path.with_suffix("")).is_dir():
            size += sum(f.stat().st_size for f in data.iterdir() if f.is_file())
        return size
    except OSError:
        return 0  # fails on its own when its turn comes


def largest_first(jobs: list[Job]) -> list[Job]:
    """The biggest inputs first (by path among equals), so that when runs or devices share a folder
    the last slide to finish is a small one, not one that runs alone for hours."""
    sizes = {job.source: input_bytes(job.source) for job in jobs}
    return sorted(jobs, key=lambda job: (-sizes[job.source], str(job.source)))


def shard(items: list, k: int, n: int) -> list:
    """Every N-th item from the K-th (from 0): shards of a sorted list are disjoint, cover it, and stay balanced."""
    return items[k::n]


@dataclass(frozen=True)
class Job:
    """One input and every file a translation of it writes."""

    source: Path
    output: Path
    preview: Path | None = None
    tissue_mask: Path | None = None

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.output)

    @property
    def roles(self) -> list[tuple[str, Path]]:
        """(role, path) of every file the job writes, the output first (publishing it claims the name)."""
        named = [("output", self.output), ("provenance record", self.sidecar)]
        return named + [(role, p) for role, p in (("tissue mask", self.tissue_mask), ("preview", self.preview)) if p]

    @property
    def files(self) -> list[Path]:
        """What the job writes, the output first."""
        return [path for _, path in self.roles]


def picture_path(option: Path, stem: str, folder: Path, kind: str) -> Path:
    """A picture option naming a file (.png, .jpg) is that file; anything else is a folder that
    gets ``folder/NAME_kind.png``."""
    if option.suffix.lower() in PICTURE_SUFFIXES:
        return option
    return option / folder / f"{stem}_{kind}.png"


def plan_jobs(
    found: list[tuple[Path, Path, str]],
    output: Path,
    *,
    one_file: bool,
    suffix: str = ".tif",
    preview: Path | None = None,
    tissue_mask: Path | None = None,
) -> list[Job]:
    """A job per input: its output (``output`` itself for one file, else ``output/folder/NAME.suffix``)
    and the pictures asked for."""
    jobs = []
    for source, folder, stem in found:
        target = output if one_file else output / folder / f"{stem}{suffix}"
        jobs.append(
            Job(
                source,
                target,
                None if preview is None else picture_path(preview, stem, folder, "preview"),
                None if tissue_mask is None else picture_path(tissue_mask, stem, folder, "tissue"),
            )
        )
    return jobs


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return os.path.realpath(a) == os.path.realpath(b)


def check_jobs(jobs: list[Job]) -> None:
    """Refuse, before any work, a run that would write one file twice or write over one of its inputs."""
    inputs = [job.source for job in jobs]
    for job in jobs:
        for role, path in job.roles:
            for source in inputs:
                if _same_file(path, source):
                    raise DnError(
                        f"{path} is an input of this run and would be written over as the {role} "
                        f"of {job.source}: write to another folder"
                    )
    writers: dict[str, tuple[Job, str]] = {}
    for job in jobs:
        for role, path in job.roles:
            key = os.path.realpath(path)
            if key in writers:
                other, first = writers[key]
                raise DnError(
                    f"{path} would be written twice: as the {first} of {other.source} and as the "
                    f"{role} of {job.source}" + _clash_hint(other, job)
                )
            writers[key] = (job, role)


def _clash_hint(a: Job, b: Job) -> str:
    if a is b:
        return ": give them different paths"
    if a.source.stem == b.source.stem:
        return ": inputs of the same name need different folders (give the folder that holds them, not the files)"
    return ": give a folder instead of a file name"
