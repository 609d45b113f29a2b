"""DICOM whole-slide images: which files of a folder make one slide, and what a person calls it.

A DICOM WSI is a series of files (one per pyramid level, label, overview), all opened by
OpenSlide from any one of them. A flat export puts several slides' series in one folder, so
the files are grouped by their SeriesInstanceUID, read from the header alone. The only module
that imports pydicom.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

TAGS = ["SeriesInstanceUID", "ContainerIdentifier", "SeriesDescription", "SeriesNumber"]


def _header(path: Path) -> dict[str, str]:
    """The few header fields that tell series apart and name them ({} for a file pydicom cannot read)."""
    with warnings.catch_warnings():  # pydicom warns about the odd value it still reads
        warnings.simplefilter("ignore")
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=TAGS)
        except Exception:  # not DICOM, or damaged: it fails on its own when translated
            return {}
    return {tag: str(ds.get(tag)).strip() for tag in TAGS if ds.get(tag) not in (None, "")}


def _safe(name: str) -> str:
    """A label as a file name: no folder separators or control characters."""
    return re.sub(r"[\x00-\x1f/\\:]+", "_", name).strip(" .") or "slide"


def series(files: list[Path]) -> list[tuple[Path, str]]:
    """One (file, name) per slide among the ``.dcm`` files of one folder, sorted by file.

    The file is the series' first; the name is its slide label (ContainerIdentifier), else its
    SeriesDescription, else that file's stem (instance UIDs, as writers name files, only as a last
    resort). Files whose header cannot be read count as one more series, as OpenSlide would open
    any of them.
    """
    groups: dict[str, list[tuple[Path, dict[str, str]]]] = {}
    for path in sorted(files):
        header = _header(path)
        groups.setdefault(header.get("SeriesInstanceUID", ""), []).append((path, header))
    found = []
    for members in groups.values():
        first, header = members[0]
        label = header.get("ContainerIdentifier") or header.get("SeriesDescription")
        found.append((first, header, _safe(label) if label else first.stem))
    # Where slides share a name (writers' defaults: "Unknown", series 1), the series number and
    # then the end of the series UID tell them apart.
    for field, prefix in (("SeriesNumber", "series"), ("SeriesInstanceUID", "")):
        names = [name for _, _, name in found]
        found = [
            (first, header, f"{name}_{prefix}{header[field][-6:]}")
            if names.count(name) > 1 and field in header
            else (first, header, name)
            for first, header, name in found
        ]
    return sorted((first, name) for first, _, name in found)
