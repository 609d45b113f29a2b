"""An uncompressed PNG byte stream produced row by row.

libvips reads a PNG progressively, so rows written here can be pyramided and saved by pyvips
while the rest of the image is still being computed. Stored (level 0) deflate costs a copy and
a checksum per byte; nothing is compressed twice. (The ``pyvips-binary`` wheel has no PPM
loader, the simpler raw stream.)
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


class PngStream:
    """Encodes an 8-bit RGB image of known size as a PNG, one band of rows at a time."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self._rows_left = height
        self._deflate = zlib.compressobj(level=0)

    def header(self) -> bytes:
        ihdr = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
        return SIGNATURE + _chunk(b"IHDR", ihdr)

    def rows(self, pixels: np.ndarray) -> bytes:
        """IDAT bytes for ``(rows, width, 3)`` uint8 pixels, the next rows of the image."""
        if pixels.shape[1:] != (self.width, 3) or pixels.shape[0] > self._rows_left:
            raise ValueError(f"expected at most {self._rows_left} rows of {self.width}×3, got {pixels.shape}")
        self._rows_left -= pixels.shape[0]
        scanlines = np.empty((pixels.shape[0], 1 + self.width * 3), np.uint8)
        scanlines[:, 0] = 0  # filter type "none"
        scanlines[:, 1:] = pixels.reshape(pixels.shape[0], -1)
        data = self._deflate.compress(scanlines.tobytes())
        if self._rows_left == 0:
            data += self._deflate.flush()
            return _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
        return _chunk(b"IDAT", data) if data else b""
