"""The layout of an uncompressed RGB BigTIFF whose pixels are streamed in row order.

libvips reads a TIFF from a stream through libtiff, one strip per read, in order; the header,
the directory and the strip tables are known from the image size alone, so they are written
first and the pixels follow as raw rows: nothing is encoded, and libvips asks for a few
hundred kilobytes at a time instead of 4 kB (the PNG stream this replaces cost a copy, a
checksum and a Python call per 4 kB).
"""

from __future__ import annotations

import struct

ROWS_PER_STRIP = 16

# TIFF field types
SHORT, LONG, LONG8 = 3, 4, 16


def strip_tiff_header(width: int, height: int, rows_per_strip: int = ROWS_PER_STRIP) -> bytes:
    """Everything of the file before the first pixel: the pixels of row ``y`` start at
    ``len(header) + y * width * 3`` and the file ends after the last row."""
    strips = -(-height // rows_per_strip)
    row_bytes = width * 3
    counts = [rows_per_strip * row_bytes] * (strips - 1) + [(height - (strips - 1) * rows_per_strip) * row_bytes]
    entries = 10
    ifd_size = 8 + entries * 20 + 8
    tables = 16 + ifd_size  # the strip offset and byte count tables follow the directory
    data = tables + (16 * strips if strips > 1 else 0)
    offsets = [data + i * rows_per_strip * row_bytes for i in range(strips)]

    def entry(tag: int, kind: int, values: list[int], table: int | None = None) -> bytes:
        code = {SHORT: "H", LONG: "I", LONG8: "Q"}[kind]
        if table is not None:  # too many to fit: the values are stored at ``table``
            return struct.pack("<HHQQ", tag, kind, len(values), table)
        return struct.pack("<HHQ", tag, kind, len(values)) + struct.pack(f"<{len(values)}{code}", *values).ljust(
            8, b"\0"
        )

    many = strips > 1
    ifd = b"".join(
        [
            struct.pack("<Q", entries),
            entry(256, LONG, [width]),
            entry(257, LONG, [height]),
            entry(258, SHORT, [8, 8, 8]),
            entry(259, SHORT, [1]),  # no compression
            entry(262, SHORT, [2]),  # RGB
            entry(273, LONG8, offsets, tables if many else None),
            entry(277, SHORT, [3]),
            entry(278, LONG, [rows_per_strip]),
            entry(279, LONG8, counts, tables + 8 * strips if many else None),
            entry(284, SHORT, [1]),  # interleaved
            struct.pack("<Q", 0),  # no next directory
        ]
    )
    header = b"II" + struct.pack("<HHHQ", 43, 8, 0, 16)  # BigTIFF: offsets past 4 GB for any slide
    arrays = struct.pack(f"<{strips}Q", *offsets) + struct.pack(f"<{strips}Q", *counts) if many else b""
    return header + ifd + arrays
