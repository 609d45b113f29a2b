"""What a run is asked to make: its inputs and outputs turned into jobs, checked before any work."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dn_cli.app.batch import DEFAULT_PATTERNS, Job, check_jobs, expand_inputs, largest_first, plan_jobs, shard
from dn_cli.errors import DnError, plural
from dn_cli.image_io import OUTPUT_SUFFIXES, PICTURE_SUFFIXES, check_output
from dn_cli.outputs import shortened, too_long


@dataclass(frozen=True)
class Request:
    """The jobs of a run, biggest input first; ``one_file``: one input to one named file."""

    jobs: list[Job]
    one_file: bool
    found: int  # inputs found, before sharding


def settings_conflict(level: int | None, mpp: float | None, tissue: bool | None, tissue_mask: Path | None) -> str:
    """Why these choices cannot be made together, or ""."""
    if level is not None and mpp is not None:
        return "--level and --mpp choose the same thing: give one"
    if tissue_mask is not None and tissue is False:
        return "--tissue-mask draws the tissue detection that --no-tissue turns off: give one"
    return ""


def plan_request(
    paths: list[Path],
    output: Path,
    *,
    recursive: bool = False,
    patterns: tuple[str, ...] = (),
    ome: bool = False,
    preview: Path | None = None,
    tissue_mask: Path | None = None,
    folders: frozenset[str] = frozenset(),
    shard_of: tuple[int, int] | None = None,
) -> Request:
    """The jobs for ``paths`` (files and folders) into ``output``: one file if one file is given
    and ``output`` has an extension, else a folder of ``NAME.tif``. ``folders``: which of output,
    preview and tissue_mask were given as folders whatever their names (a trailing slash).
    ``shard_of``: (K, N), every N-th job from the K-th of the sorted whole."""
    for path in [*paths, output, preview, tissue_mask]:
        if path is not None and (reason := too_long(path)):
            raise DnError(f"{shortened(path)}: {reason}")
    one_file = (
        len(paths) == 1 and not paths[0].is_dir() and bool(output.suffix) and not output.is_dir()
    ) and "output" not in folders
    if one_file:
        check_output(output)
    elif output.suffix.lower() in OUTPUT_SUFFIXES and not output.is_dir() and "output" not in folders:
        raise DnError(f"-o {output} names one file, but the inputs are {describe(paths)}: give a folder")
    elif output.exists() and not output.is_dir():
        raise DnError(f"-o {output} exists and is not a folder: give a folder for the outputs")
    elif same := [p for p in paths if p.is_dir() and os.path.realpath(p) == os.path.realpath(output)]:
        raise DnError(
            f"-o {output} is the input folder {same[0]}: a rerun would take its outputs for inputs; give another folder"
        )
    for option, value in (("--preview", preview), ("--tissue-mask", tissue_mask)):
        if value is None or value.is_dir() or value.suffix.lower() in PICTURE_SUFFIXES:
            continue
        if value.exists():
            raise DnError(f"{option} {value} exists and is not a folder or a .png / .jpg picture")
        if value.suffix and option.lstrip("-").replace("-", "_") not in folders:
            raise DnError(f"{option} {value}: pictures are .png or .jpg; for a folder, end it with /")
    found = expand_inputs(
        paths, recursive=recursive, patterns=patterns or DEFAULT_PATTERNS, skip=None if one_file else output
    )
    if not found:
        raise DnError(f"no slides or images found in {', '.join(map(str, paths))}")
    suffix = ".ome.tif" if ome else ".tif"
    jobs = plan_jobs(found, output, one_file=one_file, suffix=suffix, preview=preview, tissue_mask=tissue_mask)
    check_jobs(jobs)  # the whole list, so every shard of a job array refuses the same clashes
    if shard_of is not None:
        jobs = shard(jobs, *shard_of)
    # After sharding: every task of an array shards the same sorted list.
    return Request(largest_first(jobs), one_file, len(found))


def describe(paths: list[Path]) -> str:
    folders = [p for p in paths if p.is_dir()]
    return f"{plural(len(paths), 'path')}" if len(paths) > 1 or not folders else f"the folder {folders[0]}"
