"""The pieces of a pyramidal TIFF, each made on its own: tiles compressed as libtiff reads them,
and a level halved into the next. Both are pure functions of their input and spend their time in
C with the GIL released, so a pool of threads runs them on every core at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import imagecodecs
import numpy as np

TILE = 256  # pixels: a TIFF tile's side, as libvips' pyramids (and most scanners') have it
TIFF_COMPRESSIONS = ("jpeg", "deflate", "lzw", "webp", "none")

_TABLES = (0xDB, 0xC4)  # JPEG markers DQT and DHT: the tables every tile shares
_SKIPPED = (*_TABLES, 0xE0)  # and APP0 (JFIF), which TIFF's JPEG leaves out


def level_sizes(width: int, height: int) -> list[tuple[int, int]]:
    """(width, height) of every level: each half the one above (rounded down, as libvips does),
    until one fits in a tile or a side would vanish."""
    sizes = [(width, height)]
    while max(sizes[-1]) > TILE and min(sizes[-1]) >= 2:
        w, h = sizes[-1]
        sizes.append((w // 2, h // 2))
    return sizes


def halve(rows: np.ndarray) -> np.ndarray:
    """The mean of each 2 × 2 block of pixels, rounded (libvips' pyramid shrink); an odd last
    row or column is left out."""
    height, width = rows.shape[0] // 2 * 2, rows.shape[1] // 2 * 2
    rows = rows[:height, :width].reshape(height // 2, 2, width * 3)
    sums = np.empty((height // 2, width * 3), np.uint16)
    np.add(rows[:, 0], rows[:, 1], out=sums, dtype=np.uint16)  # each pixel and the one below it
    sums[:, :-3] += sums[:, 3:]  # at each pixel: its block's sum, where it starts a block
    sums += 2
    sums >>= 2
    means = sums.astype(np.uint8).reshape(height // 2, width // 2, 6)  # a block's mean, then garbage
    halved = np.empty((height // 2, width // 2, 3), np.uint8)
    for channel in range(3):  # a channel at a time: numpy's loops over three values are slow
        halved[..., channel] = means[..., channel]
    return halved


def _segments(jpeg: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment before the scan's data (which runs to the end)."""
    segments, at = [], 2  # after SOI
    while jpeg[at + 1] != 0xDA:  # up to the start of scan
        end = at + 2 + int.from_bytes(jpeg[at + 2 : at + 4], "big")
        segments.append((jpeg[at + 1], at, end))
        at = end
    segments.append((0xDA, at, len(jpeg)))
    return segments


@dataclass(frozen=True)
class TileCodec:
    """Compresses ``TILE × TILE`` RGB tiles for one TIFF image, and says how tifffile tags them.

    JPEG tiles are written as TIFF's JPEG usually is (libvips, scanners): the quantisation and
    Huffman tables once, in the JPEGTables tag, and each tile without them (a few hundred bytes
    each); YCbCr with 2 × 2 chroma subsampling. Deflate and LZW difference each row first
    (horizontal predictor), as libvips does.
    """

    compression: str
    quality: int = 85
    jpegtables: bytes | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.compression not in TIFF_COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(TIFF_COMPRESSIONS)}")
        if self.compression == "jpeg":
            blank = self._jpeg(np.zeros((TILE, TILE, 3), np.uint8))
            tables = [blank[s:e] for marker, s, e in _segments(blank) if marker in _TABLES]
            object.__setattr__(self, "jpegtables", b"\xff\xd8" + b"".join(tables) + b"\xff\xd9")

    def _jpeg(self, tile: np.ndarray) -> bytes:
        return imagecodecs.jpeg8_encode(
            tile, level=self.quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2), optimize=False
        )

    def encode(self, tile: np.ndarray) -> bytes:
        """One tile's bytes as the TIFF stores them; a tile cut short by the image's edge is
        padded with its edge pixels (readers crop them; they compress better than black)."""
        height, width = tile.shape[:2]
        if (height, width) != (TILE, TILE):
            tile = np.pad(tile, ((0, TILE - height), (0, TILE - width), (0, 0)), mode="edge")
        if self.compression == "jpeg":  # libjpeg takes the tile's rows where they lie
            return self._abbreviated(self._jpeg(tile))
        tile = np.ascontiguousarray(tile)
        if self.compression == "webp":
            return imagecodecs.webp_encode(tile, level=self.quality, lossless=False)
        if self.compression == "none":
            return tile.tobytes()
        differenced = imagecodecs.delta_encode(tile, axis=1)
        if self.compression == "deflate":
            return imagecodecs.zlib_encode(differenced, level=6)
        return imagecodecs.lzw_encode(differenced)

    def _abbreviated(self, jpeg: bytes) -> bytes:
        segments = _segments(jpeg)
        tables = [jpeg[s:e] for marker, s, e in segments if marker in _TABLES]
        if b"\xff\xd8" + b"".join(tables) + b"\xff\xd9" != self.jpegtables:
            return jpeg  # never with libjpeg's standard tables; a whole stream is valid TIFF JPEG too
        return b"\xff\xd8" + b"".join(jpeg[s:e] for marker, s, e in segments if marker not in _SKIPPED)

    def tiff_options(self) -> dict:
        """What tifffile's ``write`` needs to tag tiles made by ``encode``."""
        options: dict = {"compression": self.compression if self.compression != "none" else None}
        if self.compression == "jpeg":
            options.update(subsampling=(2, 2), jpegtables=self.jpegtables)
        if self.compression in ("deflate", "lzw"):
            options["predictor"] = True
        return options
