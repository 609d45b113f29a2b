"""Ordinary image files (PNG, JPEG, TIFF that fit in memory) in and out, through pyvips.

The only module that imports pyvips. Outputs appear under their final name only when complete.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyvips

from dn_cli.errors import InputError, OutputError
from dn_cli.images import ArrayImage, Canvas

SAVE_OPTIONS = {
    ".png": {"compression": 6},
    ".jpg": {"Q": 90},
    ".jpeg": {"Q": 90},
    ".tif": {"compression": "deflate", "tile": True},
    ".tiff": {"compression": "deflate", "tile": True},
}


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


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


def open_image(path: Path) -> ArrayImage:
    """Read an ordinary image file into memory as uint8 RGB."""
    if not path.is_file():
        raise InputError(f"input not found: {path}")
    try:
        return ArrayImage(_to_rgb8(pyvips.Image.new_from_file(str(path), access="sequential")).numpy())
    except pyvips.Error as e:
        raise InputError(f"cannot read {path} as an image: {_first_line(e)}") from e


def check_output(path: Path, overwrite: bool) -> None:
    """Refuse an output path before any work is done for it."""
    if path.suffix.lower() not in SAVE_OPTIONS:
        raise OutputError(f"cannot write {path.name}: the extension must be one of {', '.join(SAVE_OPTIONS)}")
    if path.is_dir():
        raise OutputError(f"{path} is a folder")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists (use --overwrite to replace it)")


class ImageFileSink(Canvas):
    """Assembles the output in memory and saves it atomically when closed."""

    def __init__(self, path: Path, width: int, height: int) -> None:
        super().__init__(width, height)
        self.path = path

    def close(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        suffix = self.path.suffix.lower()
        # Same folder, so the final rename is atomic; same suffix, so pyvips picks the format.
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=f".partial{suffix}", dir=self.path.parent)
        os.close(fd)
        try:
            image = pyvips.Image.new_from_array(self.pixels, interpretation="srgb")
            image.write_to_file(tmp, **SAVE_OPTIONS[suffix])
            os.replace(tmp, self.path)
        except pyvips.Error as e:
            raise OutputError(f"cannot write {self.path}: {_first_line(e)}") from e
        finally:
            Path(tmp).unlink(missing_ok=True)


def image_info(path: Path) -> dict:
    """Size, pyramid levels and pixel size (µm, when the file records one) of an image file."""
    if not path.is_file():
        raise InputError(f"input not found: {path}")
    try:
        image = pyvips.Image.new_from_file(str(path))
    except pyvips.Error as e:
        raise InputError(f"cannot read {path} as an image: {_first_line(e)}") from e
    fields = image.get_fields()
    levels = image.get("n-pages") if "n-pages" in fields else 1
    mpp = None
    # Only TIFF-like files say what their resolution means; libvips keeps pixels per mm.
    if "resolution-unit" in fields and image.xres > 0:
        mpp = round(1000 / image.xres, 6)
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
