"""Ordinary images (PNG, JPEG, TIFF that fit in memory) in and out, through pyvips.

The only module that imports pyvips. Outputs appear under their final name only when complete.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pyvips

from dn_cli.errors import InputError, OutputError
from dn_cli.geometry import Box

OUTPUT_SUFFIXES = {".png": {"compression": 6}, ".jpg": {"Q": 90}, ".jpeg": {"Q": 90},
                   ".tif": {"compression": "deflate", "tile": True}, ".tiff": {"compression": "deflate", "tile": True}}


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


class ImageFile:
    """An ordinary image file held in memory as uint8 RGB."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise InputError(f"input not found: {path}")
        try:
            self._pixels = _to_rgb8(pyvips.Image.new_from_file(str(path), access="sequential")).numpy()
        except pyvips.Error as e:
            raise InputError(f"cannot read {path} as an image: {str(e).strip().splitlines()[0]}") from e
        self.path = path

    def __repr__(self) -> str:
        return f"ImageFile({str(self.path)!r}, {self.width}×{self.height})"

    @property
    def width(self) -> int:
        return self._pixels.shape[1]

    @property
    def height(self) -> int:
        return self._pixels.shape[0]

    def read(self, box: Box) -> np.ndarray:
        return self._pixels[box.y : box.y + box.height, box.x : box.x + box.width]

    def thumbnail(self, max_side: int) -> np.ndarray:
        image = pyvips.Image.new_from_array(self._pixels, interpretation="srgb")
        scale = min(1.0, max_side / max(self.width, self.height))
        return image.resize(scale, kernel="linear").numpy() if scale < 1 else self._pixels


def check_output(path: Path, overwrite: bool) -> None:
    """Refuse an output path before any work is done on it."""
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise OutputError(f"cannot write {path.name}: use one of {', '.join(OUTPUT_SUFFIXES)}")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists (use --overwrite to replace it)")
    if path.is_dir():
        raise OutputError(f"{path} is a folder")


class ImageSink:
    """Collects output tiles in memory and saves the image atomically when closed."""

    def __init__(self, path: Path, width: int, height: int) -> None:
        self.path = path
        self._pixels = np.zeros((height, width, 3), np.uint8)

    def write(self, box: Box, pixels: np.ndarray) -> None:
        self._pixels[box.y : box.y + box.height, box.x : box.x + box.width] = pixels

    def close(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        suffix = self.path.suffix.lower()
        # Same folder, so the final rename is atomic; same suffix, so pyvips picks the format.
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=f".partial{suffix}", dir=self.path.parent)
        os.close(fd)
        try:
            image = pyvips.Image.new_from_array(self._pixels, interpretation="srgb")
            image.write_to_file(tmp, **OUTPUT_SUFFIXES[suffix])
            os.replace(tmp, self.path)
        except BaseException as e:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(e, pyvips.Error):
                raise OutputError(f"cannot write {self.path}: {str(e).strip().splitlines()[0]}") from e
            raise
