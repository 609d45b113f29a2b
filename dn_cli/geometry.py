"""Tile geometry: which slide pixels each tile covers and reads.

All coordinates are level pixels of the image being translated; ``row, col`` are grid indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dn_cli.errors import GeometryError

DEFAULT_MIN_MARGIN = 16
MAX_TILE = 8192  # a tile's activations alone would fill any GPU beyond this


@dataclass(frozen=True)
class Box:
    """A rectangle in level pixels: ``[x, x + width) × [y, y + height)``."""

    x: int
    y: int
    width: int
    height: int


def in_image(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """The part of ``box`` inside a ``width × height`` image, in pixels of the box: (top, bottom,
    left, right)."""
    top, left = max(0, -box.y), max(0, -box.x)
    return top, min(box.height, height - box.y), left, min(box.width, width - box.x)


@dataclass(frozen=True)
class TileGrid:
    """A ``rows × cols`` grid of ``tile_size`` tiles over a ``width × height`` image.

    Tile (row, col) covers ``[col*T, (col+1)*T) × [row*T, (row+1)*T)``; the model reads it grown
    by ``margin`` on every side. The last row and column may run past the image edge.
    """

    width: int
    height: int
    tile_size: int
    margin: int

    @property
    def rows(self) -> int:
        return -(-self.height // self.tile_size)

    @property
    def cols(self) -> int:
        return -(-self.width // self.tile_size)

    @property
    def padded_size(self) -> int:
        """Side of the square the model sees: ``T + 2m``."""
        return self.tile_size + 2 * self.margin

    def __len__(self) -> int:
        return self.rows * self.cols

    def position(self, index: int) -> tuple[int, int]:
        """(row, col) of the tile at raster ``index``."""
        return divmod(index, self.cols)

    def padded_box(self, row: int, col: int) -> Box:
        """The region the model reads for a tile (may extend outside the image)."""
        t, m = self.tile_size, self.margin
        return Box(col * t - m, row * t - m, t + 2 * m, t + 2 * m)

    def inside(self, row: int, col: int) -> tuple[int, int, int, int]:
        """The part of a tile's padded box that lies in the image, in pixels of that box:
        (top, bottom, left, right); ``(0, side, 0, side)`` for a tile whose context is all image."""
        return in_image(self.padded_box(row, col), self.width, self.height)

    def output_box(self, row: int, col: int) -> Box:
        """The tile's own pixels, cropped to the image."""
        t = self.tile_size
        x, y = col * t, row * t
        return Box(x, y, min(t, self.width - x), min(t, self.height - y))


@dataclass(frozen=True)
class MomentGrid:
    """Where DN measures moments: windows of the tiles' padded size centred every ``stride``
    pixels, from the first tile's centre to the last's. ``stride`` = T: the tiles' own padded
    boxes, one window per tile; T/2: also windows halfway between tile centres, (2R − 1) ×
    (2C − 1) of them, so no pixel is more than a quarter tile from where its moments were
    measured. Window (a, b) is centred at (T/2 + a·S, T/2 + b·S); the moments of tile (r, c)'s
    neighbourhood are those of windows (f·r + i, f·c + j), i, j ∈ {−1, 0, 1}, f = T/S.
    """

    tiles: TileGrid
    stride: int

    def __post_init__(self) -> None:
        if self.tiles.tile_size not in (self.stride, 2 * self.stride):
            raise GeometryError(f"moment stride {self.stride}: the tile size or half of it")

    @property
    def factor(self) -> int:
        return self.tiles.tile_size // self.stride

    @property
    def rows(self) -> int:
        return self.factor * (self.tiles.rows - 1) + 1

    @property
    def cols(self) -> int:
        return self.factor * (self.tiles.cols - 1) + 1

    @property
    def padded_size(self) -> int:
        return self.tiles.padded_size

    @property
    def width(self) -> int:
        return self.tiles.width

    @property
    def height(self) -> int:
        return self.tiles.height

    def __len__(self) -> int:
        return self.rows * self.cols

    def position(self, index: int) -> tuple[int, int]:
        return divmod(index, self.cols)

    def padded_box(self, row: int, col: int) -> Box:
        """Window (row, col): centred at T/2 + index·S, so its origin is index·S − m."""
        s, m, side = self.stride, self.tiles.margin, self.padded_size
        return Box(col * s - m, row * s - m, side, side)

    def inside(self, row: int, col: int) -> tuple[int, int, int, int]:
        """The part of a window in the image, as :meth:`TileGrid.inside`."""
        return in_image(self.padded_box(row, col), self.width, self.height)

    def tiles_of(self, index: int) -> list[int]:
        """The raster indices of the tiles whose neighbourhoods hold window ``index``: the tile
        it is centred in, and with S = T/2 for a window on a tile border both tiles beside it."""
        f, cols = self.factor, self.tiles.cols
        if f == 1:
            return [index]
        # Tile r's neighbourhood holds windows f·r − 1 … f·r + 1: window a is in tiles ⌈(a−1)/f⌉ … ⌊(a+1)/f⌋.
        row, col = self.position(index)
        rows = range(max(0, (row + f - 2) // f), min(self.tiles.rows - 1, (row + 1) // f) + 1)
        columns = range(max(0, (col + f - 2) // f), min(cols - 1, (col + 1) // f) + 1)
        return [r * cols + c for r in rows for c in columns]


def reflect_indices(start: int, length: int, size: int) -> np.ndarray:
    """Indices ``start .. start+length`` folded into ``[0, size)`` by mirror reflection.

    Reflection excludes the edge pixel (like ``numpy.pad(mode="reflect")``) and repeats as often
    as needed, so any window over any image size is defined.
    """
    idx = np.arange(start, start + length)
    if size == 1:
        return np.zeros_like(idx)
    period = 2 * (size - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= size, period - idx, idx)


def check_geometry(tile_size: int, margin: int, stride: int) -> None:
    """Refuse a tile size and margin the model or DN cannot use, naming valid values."""
    if tile_size < 1 or margin < 0:
        raise GeometryError(f"tile size must be positive and margin non-negative (got {tile_size}, {margin})")
    if 2 * margin > tile_size:
        raise GeometryError(
            f"margin {margin} is more than half the tile size {tile_size}: use --margin {tile_size // 2} or less"
        )
    padded = tile_size + 2 * margin
    if padded % stride:
        margins = _nearest([m for m in range(tile_size // 2 + 1) if (tile_size + 2 * m) % stride == 0], margin)
        tiles = _nearest(
            [t for t in range(max(1, 2 * margin), tile_size + 4 * stride + 1) if (t + 2 * margin) % stride == 0],
            tile_size,
        )
        hint = f"--margin {' / '.join(map(str, margins))}" if margins else "no margin fits this tile size"
        raise GeometryError(
            f"tile size {tile_size} + 2 × margin {margin} = {padded} is not a multiple of the model's "
            f"total stride {stride}; valid: {hint}, or --tile-size {' / '.join(map(str, tiles))}"
        )


def _nearest(values: list[int], target: int, count: int = 3) -> list[int]:
    return sorted(sorted(values, key=lambda v: abs(v - target))[:count])


def fit_grid(width: int, height: int, tile_size: int, margin: int, stride: int, min_size: int = 1) -> TileGrid:
    """The tile grid over an image; a tile larger than the image shrinks to the smallest that
    still covers it, runs through the model (``T + 2m`` a multiple of ``stride``, at least
    ``min_size``) and holds the margin, so a huge ``--tile-size`` never costs more than the image."""
    if tile_size > max(width, height):
        low = max(width, height, 2 * margin, min_size - 2 * margin)
        tile_size = next(t for t in range(low, tile_size + 1) if (t + 2 * margin) % stride == 0)
    return TileGrid(width, height, tile_size, margin)


def default_margin(tile_size: int, stride: int) -> int:
    """The smallest margin ≥ 16 that makes ``T + 2m`` a multiple of ``stride`` (DESIGN.md §2)."""
    for margin in range(DEFAULT_MIN_MARGIN, DEFAULT_MIN_MARGIN + stride + 1):
        if (tile_size + 2 * margin) % stride == 0:
            return margin
    # Odd padded sizes can never meet an even stride: let check_geometry explain.
    return DEFAULT_MIN_MARGIN
