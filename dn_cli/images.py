"""Images as the pipeline sees them: sources read by region, sinks written tile by tile.

Pure numpy; file formats live in ``image_io`` (and, for slides, their own reader module).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from dn_cli.geometry import Box, reflect_indices


class ImageSource:
    """An RGB image readable by region, in level pixels; closed on leaving a ``with`` block.

    What every source declares (subclasses set what they know):
        width, height: the size of the image read (the chosen level, shrunk for ``--mpp``).
        mpp: its pixel size in µm, None when unknown (or implausible: a screen's 72 dpi).
        recorded_mpp: the full-resolution pixel size the file records, plausible or not.
        levels: (width, height) of each level of the file's pyramid; empty where the reader
            sees one image only.
        vendor: the scanner's format, as OpenSlide names it.
    """

    width: int
    height: int
    mpp: float | None = None
    recorded_mpp: float | None = None
    levels: list[tuple[int, int]] = []  # noqa: RUF012  (never changed: subclasses assign their own)
    vendor: str | None = None

    def read(self, box: Box) -> np.ndarray:
        """``(height, width, 3)`` uint8 pixels of a box that lies inside the image."""
        raise NotImplementedError

    def thumbnail(self, max_side: int) -> np.ndarray:
        """The whole image shrunk so its longer side is at most ``max_side``, as uint8 RGB."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


class Sink(Protocol):
    """Where output tiles go, in raster order; ``close`` completes the output, ``abort`` discards it."""

    def write(self, box: Box, pixels: np.ndarray) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def read_padded(source: ImageSource, box: Box) -> np.ndarray:
    """Read ``box`` from ``source``; only pixels outside the image are filled by reflection.

    Reads the smallest in-image window that holds every reflected index, then gathers from it.
    """
    ys = reflect_indices(box.y, box.height, source.height)
    xs = reflect_indices(box.x, box.width, source.width)
    y0, x0 = int(ys.min()), int(xs.min())
    window = source.read(Box(x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1))
    if window.shape[:2] == (box.height, box.width) and (x0, y0) == (box.x, box.y):
        return window
    return window[np.ix_(ys - y0, xs - x0)]


def opaque(rgba: np.ndarray, background: np.ndarray | int = 255) -> np.ndarray:
    """RGB of straight (not premultiplied) RGBA composited onto ``background``: transparency is
    never dropped, which would turn transparent areas black."""
    alpha = rgba[..., 3:].astype(np.uint16)
    if alpha.min() == 255:
        return rgba[..., :3]
    return ((rgba[..., :3] * alpha + np.uint16(background) * (255 - alpha) + 127) // 255).astype(np.uint8)


def block_thumbnail(source: ImageSource, max_side: int, band_bytes: int = 16 << 20) -> np.ndarray:
    """``source`` area-averaged by the smallest integer factor that fits ``max_side`` (a remainder
    of fewer rows or columns than the factor is left out), read a band of rows at a time."""
    factor = -(-max(source.width, source.height) // max_side)
    fy, fx = min(factor, source.height), min(factor, source.width)  # a side thinner than the factor: 1 pixel
    if fy == fx == 1:
        return source.read(Box(0, 0, source.width, source.height))
    h, w = source.height // fy * fy, source.width // fx * fx
    rows = max(1, band_bytes // (w * 3 * fy)) * fy
    bands = []
    for y in range(0, h, rows):
        pixels = source.read(Box(0, y, w, min(rows, h - y)))
        n = len(pixels) // fy  # sums in integers, one axis at a time: exact, and fast on strided data
        sums = pixels.reshape(n, fy, w * 3).sum(axis=1, dtype=np.uint32).reshape(n, w // fx, fx, 3)
        bands.append((sums.sum(axis=2) / (fx * fy)).round().astype(np.uint8))
    return np.concatenate(bands)


def area_shrink(pixels: np.ndarray, width: int, height: int, scale: float | tuple[float, float]) -> np.ndarray:
    """uint8 ``(height, width, 3)``: output pixel (i, j) is the exact area average of the input
    rectangle ``[j·sx, (j+1)·sx) × [i·sy, (i+1)·sy)`` (partly covered pixels weighted by the part
    covered), ``scale`` being ``sx = sy`` or ``(sx, sy)``. ``pixels`` must hold at least
    ``ceil(width · sx)`` columns and ``ceil(height · sy)`` rows."""
    sx, sy = scale if isinstance(scale, tuple) else (scale, scale)
    out = _area_axis(_area_axis(pixels.astype(np.float64), height, sy, 0), width, sx, 1)
    return np.rint(out).astype(np.uint8)


def _area_axis(a: np.ndarray, size: int, scale: float, axis: int) -> np.ndarray:
    # The integral of the piecewise-constant signal at each output edge, differenced.
    a = np.moveaxis(a, axis, 0)
    integral = np.concatenate([np.zeros_like(a[:1]), np.cumsum(a, axis=0)])
    edges = np.arange(size + 1) * scale
    whole = np.minimum(np.floor(edges).astype(int), len(a) - 1)
    part = (edges - whole)[:, None, None]
    at_edges = integral[whole] + part * a[whole]
    return np.moveaxis(np.diff(at_edges, axis=0) / scale, 0, axis)


class ArrayImage(ImageSource):
    """An RGB image held in memory as a ``(height, width, 3)`` uint8 array."""

    def __init__(self, pixels: np.ndarray, mpp: float | None = None) -> None:
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"expected (H, W, 3) uint8 pixels, got {pixels.shape} {pixels.dtype}")
        self.pixels = pixels
        self.mpp = mpp  # µm per pixel, when known

    def __repr__(self) -> str:
        return f"ArrayImage({self.width}×{self.height})"

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    def read(self, box: Box) -> np.ndarray:
        return self.pixels[box.y : box.y + box.height, box.x : box.x + box.width]

    def thumbnail(self, max_side: int) -> np.ndarray:
        return block_thumbnail(self, max_side)


class Canvas:
    """A sink that assembles the output in memory (ordinary images only)."""

    def __init__(self, width: int, height: int) -> None:
        self.pixels = np.zeros((height, width, 3), np.uint8)

    def write(self, box: Box, pixels: np.ndarray) -> None:
        self.pixels[box.y : box.y + box.height, box.x : box.x + box.width] = pixels

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass
