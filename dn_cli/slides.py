"""Whole-slide images through OpenSlide: the only module that imports ``openslide``.

A :class:`SlideImage` is one resolution of a slide, chosen by level or by pixel size, read by
region in that resolution's pixels. Transparent areas (outside scanned regions) are composited
onto the slide's own background colour, and MRXS-style bounds limit the image to the scanned
area.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import openslide

from dn_cli.errors import InputError
from dn_cli.geometry import Box
from dn_cli.images import ImageSource, area_shrink, opaque
from dn_cli.levels import choose_resolution, plausible_mpp
from dn_cli.native_paths import native


def slide_format(path: Path) -> str | None:
    """The format OpenSlide reads ``path`` as (``aperio``, ``dicom``, ``generic-tiff``...), or None."""
    try:
        return openslide.OpenSlide.detect_format(native(path))
    except openslide.OpenSlideError:
        return None


def is_slide(path: Path) -> bool:
    """Whether OpenSlide reads ``path`` (SVS, NDPI, MRXS, SCN, BIF, Philips, DICOM, tiled TIFF...)."""
    return slide_format(path) is not None


def _hex_colour(value: str | None) -> np.ndarray:
    value = (value or "ffffff").lstrip("#")
    return np.array([int(value[i : i + 2], 16) for i in (0, 2, 4)], np.uint16)


class SlideImage(ImageSource):
    """One resolution of a whole-slide image, readable by region.

    Args:
        path: the slide file (for MRXS, the ``.mrxs`` file beside its data folder).
        level: pyramid level to read (0 = full resolution).
        mpp: target pixel size in µm: the nearest finer level is read and shrunk (area average).
        mpp_override: the full-resolution pixel size to assume when the file records none (or only
            a screen default); a recorded microscope pixel size always wins.
        allow_upsampling: accept an ``mpp`` finer than the full resolution (refused otherwise: it
            would record a pixel size the scan does not have).
    """

    def __init__(
        self,
        path: Path,
        *,
        level: int | None = None,
        mpp: float | None = None,
        mpp_override: float | None = None,
        allow_upsampling: bool = False,
    ) -> None:
        try:
            self._slide = openslide.OpenSlide(native(path))
        except openslide.OpenSlideError as e:
            raise InputError(f"cannot read {path} as a slide: {e}") from e
        self.path = path
        props = self._slide.properties
        recorded = props.get(openslide.PROPERTY_NAME_MPP_X)
        self.recorded_mpp = float(recorded) if recorded else None  # what the file says, plausible or not
        base_mpp = plausible_mpp(self.recorded_mpp) or mpp_override  # never over a recorded size
        full_w, full_h = self._slide.dimensions
        self._x0 = int(props.get(openslide.PROPERTY_NAME_BOUNDS_X, 0))
        self._y0 = int(props.get(openslide.PROPERTY_NAME_BOUNDS_Y, 0))
        bounds = (
            int(props.get(openslide.PROPERTY_NAME_BOUNDS_WIDTH, full_w)),
            int(props.get(openslide.PROPERTY_NAME_BOUNDS_HEIGHT, full_h)),
        )
        try:
            chosen = choose_resolution(
                path.name,
                bounds,
                list(self._slide.level_downsamples),
                base_mpp,
                level=level,
                mpp=mpp,
                allow_upsampling=allow_upsampling,
            )
        except InputError:
            self.close()
            raise
        self.level, self.scale, self.downsample, self.mpp = chosen.level, chosen.scale, chosen.downsample, chosen.mpp
        self.width, self.height = chosen.width, chosen.height
        self.background = _hex_colour(props.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR))
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR)

    def __repr__(self) -> str:
        return f"SlideImage({str(self.path)!r}, level={self.level}, {self.width}×{self.height}, mpp={self.mpp})"

    def close(self) -> None:
        self._slide.close()

    @property
    def levels(self) -> list[tuple[int, int]]:
        """(width, height) of every level of the slide."""
        return list(self._slide.level_dimensions)

    def read(self, box: Box) -> np.ndarray:
        """``(height, width, 3)`` uint8 RGB of a box in this image's pixels."""
        origin = (self._x0 + round(box.x * self.downsample), self._y0 + round(box.y * self.downsample))
        size = (math.ceil(box.width * self.scale), math.ceil(box.height * self.scale))
        try:
            region = self._slide.read_region(origin, self.level, size)
        except openslide.OpenSlideError as e:
            raise InputError(f"cannot read {self.path.name} at {origin} (level {self.level}): {e}") from e
        pixels = opaque(np.asarray(region), self.background)
        return pixels if self.scale == 1.0 else area_shrink(pixels, box.width, box.height, self.scale)

    def thumbnail(self, max_side: int) -> np.ndarray:
        """The image shrunk so its longer side is at most ``max_side``, from the coarsest level that suffices."""
        shrink = max(1.0, max(self.width, self.height) / max_side)
        level = self._slide.get_best_level_for_downsample(self.downsample * shrink)
        level_ds = self._slide.level_downsamples[level]
        exact = (self.width * self.downsample / level_ds, self.height * self.downsample / level_ds)  # level pixels
        try:
            region = self._slide.read_region((self._x0, self._y0), level, tuple(math.ceil(n) for n in exact))
        except openslide.OpenSlideError as e:
            raise InputError(f"cannot read {self.path.name} (level {level}): {e}") from e
        width, height = max(1, round(self.width / shrink)), max(1, round(self.height / shrink))
        pixels = opaque(np.asarray(region), self.background)
        return area_shrink(pixels, width, height, (exact[0] / width, exact[1] / height))
