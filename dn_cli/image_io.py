"""Ordinary image files (PNG, JPEG, TIFF...) in and out, through pyvips.

The only module that imports pyvips. Writers write the path they are given; under which name
a finished file appears is ``outputs``' job.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyvips

from dn_cli.errors import InputError, OutputError, first_line
from dn_cli.geometry import Box
from dn_cli.handover import never
from dn_cli.images import Canvas, ImageSource, block_thumbnail
from dn_cli.levels import plausible_mpp
from dn_cli.native_paths import native
from dn_cli.pyramid_tiff import PyramidTiffSink

SAVE_OPTIONS = {".png": {"compression": 6}, ".jpg": {"Q": 90}, ".jpeg": {"Q": 90}}
PICTURE_SUFFIXES = tuple(SAVE_OPTIONS)
PYRAMID_SUFFIXES = (".tif", ".tiff")
OUTPUT_SUFFIXES = (*SAVE_OPTIONS, *PYRAMID_SUFFIXES)


def _to_rgb8(image: pyvips.Image) -> pyvips.Image:
    """sRGB, 8 bits, 3 bands; transparency composited onto white."""
    if image.hasalpha():
        image = image.flatten(background=[255] * (image.bands - 1))
    if image.interpretation not in ("srgb", "b-w") or image.format != "uchar":
        image = image.colourspace("srgb")
    if image.format != "uchar":
        image = image.cast("uchar")
    if image.bands == 1:
        image = image.bandjoin([image, image])
    return image[:3] if image.bands > 3 else image


class VipsImage(ImageSource):
    """An image file (PNG, JPEG, TIFF layouts ``tiff_image`` leaves out...) read by region through
    libvips. Formats without random access are decoded once on opening: into memory when small,
    into a temporary file when over 100 MB (libvips' rule), so a big file does not need its size in RAM.
    """

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise InputError(f"input not found: {path}")
        self.path = path
        try:
            image = pyvips.Image.new_from_file(native(path), access="random", fail_on="truncated", revalidate=True)
            self.recorded_mpp = _mpp(image)  # what the file says, plausible or not
            self.mpp = plausible_mpp(self.recorded_mpp)
            self._image = _to_rgb8(image.autorot())  # upright, as viewers show it (a phone's EXIF orientation)
            self._regions = threading.local()  # a libvips region serves one thread
            self.read(Box(0, 0, 1, 1))  # decodes now: a damaged file fails here, never reads grey
        except pyvips.Error as e:
            raise InputError(f"cannot read {path}: {unreadable(e)}") from e
        self.width, self.height = self._image.width, self._image.height

    def __repr__(self) -> str:
        return f"VipsImage({str(self.path)!r}, {self.width}×{self.height})"

    def read(self, box: Box) -> np.ndarray:
        region = getattr(self._regions, "region", None)
        if region is None:
            region = self._regions.region = pyvips.Region.new(self._image)
        try:
            data = region.fetch(box.x, box.y, box.width, box.height)
        except pyvips.Error as e:
            raise InputError(f"cannot read {self.path.name}: {unreadable(e)}") from e
        return np.frombuffer(data, np.uint8).reshape(box.height, box.width, 3)

    def thumbnail(self, max_side: int) -> np.ndarray:
        return block_thumbnail(self, max_side)

    def close(self) -> None:
        self._image = None


def unreadable(error: pyvips.Error) -> str:
    """Why libvips could not read a file, in words."""
    if "unable to load from file" in str(error):
        return "not a slide or image format dn reads (or damaged)"
    reason = vips_reason(error)
    temporary = re.search(r'unable to write to "([^"]+)"', str(error))  # big pictures decode to a file
    if temporary or reason in ("no space left on device", "disk quota exceeded"):
        folder = Path(temporary[1]).parent if temporary else Path(os.environ.get("TMPDIR") or "/tmp")
        return f"no room to decode it in {folder} ({reason}): point TMPDIR at a folder with space"
    return f"damaged or incomplete ({reason})"


def _mpp(image: pyvips.Image) -> float | None:
    """µm per pixel if the file records a physical resolution (TIFF-like files say what theirs means)."""
    if "resolution-unit" in image.get_fields() and image.xres > 0:
        return round(1000 / image.xres, 6)  # libvips keeps pixels per mm
    return None


def check_output(path: Path) -> None:
    """Refuse an output file name dn cannot write, before any work is done for it."""
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise OutputError(f"cannot write {path.name}: the extension must be one of {', '.join(OUTPUT_SUFFIXES)}")
    if path.is_dir():
        raise OutputError(f"{path} is a folder")


class ImageFileSink(Canvas):
    """Assembles a PNG or JPEG output in memory and saves it to ``path`` (format by suffix, JPEG at
    ``quality``) when closed."""

    def __init__(
        self, path: Path, width: int, height: int, quality: int | None = None, name: str | None = None
    ) -> None:
        check_size(Path(name or path.name), width, height)  # opened before any tile is translated
        super().__init__(width, height)
        self.path, self.quality, self.name = path, quality, name

    def close(self) -> None:
        save_picture(self.pixels, self.path, self.quality, self.name)


def image_info(path: Path) -> dict:
    """Size, pyramid levels and pixel size (µm, when the file records one) of an image file."""
    if not path.is_file():
        raise InputError(f"input not found: {path}")
    try:
        image = pyvips.Image.new_from_file(native(path))
    except pyvips.Error as e:
        raise InputError(f"cannot read {path}: {unreadable(e)}") from e
    fields = image.get_fields()
    levels = image.get("n-pages") if "n-pages" in fields else 1
    mpp = plausible_mpp(_mpp(image))
    image = image.autorot()  # the size dn translates
    return {
        "path": str(path),
        "kind": "image",
        "format": image.get("vips-loader") if "vips-loader" in fields else None,
        "width": image.width,
        "height": image.height,
        "bands": image.bands,
        "levels": levels,
        "mpp": mpp,
    }


def vips_reason(error: BaseException) -> str:
    """What libvips says went wrong, in words: the operating system's reason where it gives one
    (``no space left on device``), else its first detail."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        reason = line.removeprefix("system error:").strip()
        if reason != line and not reason.lower().startswith("unknown error"):
            return reason.lower()
    details = [line for line in lines if not line.startswith("unable to call")]
    return (details or [first_line(error)])[0]


def open_sink(
    path: Path,
    width: int,
    height: int,
    *,
    mpp: float | None,
    compression: str,
    quality: int,
    description: str,
    ome: bool = False,
    name: str | None = None,
    should_stop: Callable[[], bool] = never,
) -> ImageFileSink | PyramidTiffSink:
    """A pyramidal TIFF for ``.tif`` paths (OME-TIFF with ``ome``), an in-memory PNG / JPEG otherwise.
    ``should_stop``: asked by the TIFF writer while the caller waits for it."""
    if path.suffix.lower() in PYRAMID_SUFFIXES:
        return PyramidTiffSink(
            path,
            width,
            height,
            mpp=mpp,
            compression=compression,
            quality=quality,
            description=description,
            ome=ome,
            name=name,
            should_stop=should_stop,
        )
    return ImageFileSink(path, width, height, quality, name)


def write_test_slide(path: Path, sample: Path, size: int) -> None:
    """A ``size × size`` slide of real tissue for benchmarks: ``sample`` (the bundled slide)
    repeated, as a tiled pyramidal JPEG TIFF at its pixel size."""
    image = pyvips.Image.new_from_file(str(sample))
    repeats = -(-size // min(image.width, image.height))
    tiled = _to_rgb8(image).replicate(repeats, repeats).crop(0, 0, size, size)
    mpp = _mpp(image) or 0.5
    resolution = {"xres": 1000 / mpp, "yres": 1000 / mpp, "resunit": "cm"}  # libvips takes pixels per mm
    tiled.tiffsave(str(path), tile=True, pyramid=True, compression="jpeg", Q=90, **resolution)


def image_description(path: Path) -> str | None:
    """The ImageDescription of a TIFF (None for other files, or where there is none)."""
    try:
        image = pyvips.Image.new_from_file(native(path))
        return image.get("image-description") if "image-description" in image.get_fields() else None
    except pyvips.Error:
        return None


def thumbnail_file(path: Path, width: int, height: int) -> np.ndarray:
    """An image file shrunk to ``width × height`` (from its pyramid when it has one)."""
    return _to_rgb8(pyvips.Image.thumbnail(native(path), width, height=height, size="force")).numpy()


MAX_SIDE = {".jpg": 65535, ".jpeg": 65535}  # what the format can hold


def check_size(path: Path, width: int, height: int) -> None:
    """Refuse, before the work, an output its format cannot hold."""
    most = MAX_SIDE.get(path.suffix.lower())
    if most is not None and max(width, height) > most:
        raise OutputError(
            f"{path.name} would be {width} × {height} pixels: JPEG holds at most {most} a side; write a .tif or .png"
        )


def save_picture(pixels: np.ndarray, path: Path, quality: int | None = None, name: str | None = None) -> None:
    """Write uint8 RGB pixels to ``path``, PNG or JPEG by its suffix (JPEG at ``quality``, else 90);
    errors name the file ``name`` (the final name of a temporary ``path``)."""
    options = SAVE_OPTIONS[path.suffix.lower()]
    if quality is not None and "Q" in options:
        options = {**options, "Q": quality}
    try:
        image = pyvips.Image.new_from_array(np.ascontiguousarray(pixels), interpretation="srgb")
        image.write_to_file(native(path), **options)
    except pyvips.Error as e:
        raise OutputError(f"cannot write {name or path.name}: {vips_reason(e)}") from e
