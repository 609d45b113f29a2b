"""A pyramidal tiled TIFF written while the image is translated, its tiles compressed on every core.

Rows of tiles arrive in raster order (``write``) and go, a row at a time, to a writer thread.
It cuts them into strips one TIFF tile high and hands each strip to a pool of threads that
compress its tiles and halve it for the level below (``tiff_tiles``: C code that releases the
GIL), while tifffile writes the strips before it, in order, into the file. Each level feeds the
next the same way, down to one that fits in a tile. A TIFF stores its images one after another,
so the smaller levels' tiles wait, compressed, in an unnamed temporary file beside the output
until level 0 is complete, and are copied in after it. Memory holds a few strips per level,
whatever the image's height.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO
from xml.sax.saxutils import escape

import numpy as np
import tifffile

from dn_cli.errors import OutputError, first_line
from dn_cli.geometry import Box
from dn_cli.handover import Handover, never
from dn_cli.native_paths import printable
from dn_cli.outputs import os_reason
from dn_cli.tiff_tiles import TILE, TileCodec, halve, level_sizes

AHEAD = 2  # strips of a level compressed ahead of the one being written: the pool never idles


def cores() -> int:
    """The cores this process may run on (taskset, a Slurm allocation), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _Level:
    """One level of the pyramid: its rows gathered into strips one tile high, each strip's tiles
    compressed (and the strip halved for the level below) in the pool, and the compressed strips
    handed to ``out`` in order."""

    def __init__(
        self,
        size: tuple[int, int],
        codec: TileCodec,
        pool: ThreadPoolExecutor,
        out: Callable[[list[bytes]], None],
        below: _Level | None,
    ) -> None:
        (self.width, self.height), self._codec, self._pool, self._out, self._below = size, codec, pool, out, below
        self._rows: list[np.ndarray] = []  # of the strip being gathered
        self.received = 0
        self._in_flight: deque[tuple[list[Future[bytes]], Future[np.ndarray] | None]] = deque()

    def add(self, rows: np.ndarray) -> None:
        """The level's next rows (its last strip goes out when its last row arrives)."""
        self.received += len(rows)
        while len(rows):
            take = min(TILE - sum(map(len, self._rows)), len(rows))
            self._rows.append(rows[:take])
            rows = rows[take:]
            if sum(map(len, self._rows)) == TILE or self.received == self.height and not len(rows):
                strip = self._rows[0] if len(self._rows) == 1 else np.concatenate(self._rows)
                encode = self._codec.encode
                tiles = [self._pool.submit(encode, strip[:, x : x + TILE]) for x in range(0, self.width, TILE)]
                halved = self._pool.submit(halve, strip) if self._below is not None else None
                self._in_flight.append((tiles, halved))
                self._rows = []

    def settle(self, ahead: int) -> None:
        """Hand on the strips already compressed, in order, waiting until at most ``ahead`` are
        still in flight here and in every level below (0: all of them, at the end)."""
        while self._in_flight and (len(self._in_flight) > ahead or all(f.done() for f in self._in_flight[0][0])):
            tiles, halved = self._in_flight.popleft()
            self._out([f.result() for f in tiles])
            if halved is not None:
                self._below.add(halved.result())
        if self._below is not None:
            self._below.settle(ahead)


class _Spill:
    """The smaller levels' compressed tiles, waiting in an unnamed temporary file."""

    def __init__(self, file: BinaryIO, levels: int) -> None:
        self._file, self._end = file, 0
        self.tiles: list[list[tuple[int, int]]] = [[] for _ in range(levels)]  # (offset, length) by level

    def keeper(self, level: int) -> Callable[[list[bytes]], None]:
        def keep(tiles: list[bytes]) -> None:
            for data in tiles:
                self._file.write(data)
                self.tiles[level].append((self._end, len(data)))
                self._end += len(data)

        return keep

    def read(self, level: int) -> Iterator[bytes]:
        for offset, length in self.tiles[level]:
            self._file.seek(offset)
            yield self._file.read(length)


class PyramidTiffSink:
    """Streams output tiles into a pyramidal tiled TIFF (256-pixel tiles, BigTIFF) while the image
    is being translated. ``close`` completes the file; ``abort`` stops the writer. (The file is
    the caller's: ``outputs.Partial`` gives it its final name, or deletes it.)

    Args:
        path: the file to write.
        width, height: image size in pixels.
        mpp: pixel size in µm, recorded as resolution in pixels per cm (None: ResolutionUnit NONE).
        compression: one of ``TIFF_COMPRESSIONS``; ``quality`` applies to jpeg and webp.
        description: stored as the TIFF ImageDescription (provenance).
        ome: OME-TIFF (pyramid in SubIFDs, OME-XML).
        name: the output's name, for OME-XML and messages (default: the file's).
        workers: threads compressing tiles (default: one per core this process may use).
        should_stop: asked while the translating thread waits for the writer (behind, or
            finishing the pyramid); True stops it there with KeyboardInterrupt.
    """

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        *,
        mpp: float | None = None,
        compression: str = "jpeg",
        quality: int = 85,
        description: str = "",
        ome: bool = False,
        name: str | None = None,
        workers: int | None = None,
        should_stop: Callable[[], bool] = never,
    ) -> None:
        self.path, self.width, self.height, self.mpp = path, width, height, mpp
        self.name = name or path.name
        self._codec = TileCodec(compression, quality)
        self._band: np.ndarray | None = None  # the row of tiles being filled
        self._aborted = False
        if ome:  # pyramid levels as SubIFDs of the full-resolution image, described by OME-XML
            description = ome_xml(printable(self.name), width, height, mpp, description)
        self._description, self._ome, self._workers = description, ome, workers or cores()
        self._bands: Handover[np.ndarray] = Handover(self._save, "dn-tiffsave", 2, should_stop, self._failed)

    # The writer thread ---------------------------------------------------------------------------

    def _save(self, take: Callable[[], np.ndarray | None]) -> None:
        description, ome, workers = self._description, self._ome, self._workers
        sizes = level_sizes(self.width, self.height)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="dn-tiff-encode")
        try:
            spilled = tempfile.TemporaryFile(dir=self.path.parent)  # beside the output: where there is room
            with spilled as file, tifffile.TiffWriter(self.path, bigtiff=True) as tiff:
                spill, ready = _Spill(file, len(sizes)), deque()
                below = None
                for k in range(len(sizes) - 1, 0, -1):
                    below = _Level(sizes[k], self._codec, pool, spill.keeper(k), below)
                top = _Level(sizes[0], self._codec, pool, ready.extend, below)
                tiff.write(
                    self._top_tiles(top, ready, take),
                    **self._page(0, sizes),
                    description=description.encode() or None,  # UTF-8: OME-XML says µm
                    subifds=len(sizes) - 1 if ome else None,
                )
                top.settle(0)  # tifffile stops asking at level 0's last tile: the levels below may be in flight
                for k in range(1, len(sizes)):
                    tiff.write(self._unless_aborted(spill.read(k)), **self._page(k, sizes), subfiletype=1)
        finally:
            pool.shutdown(cancel_futures=True)

    def _page(self, level: int, sizes: list[tuple[int, int]]) -> dict:
        width, height = sizes[level]
        resolution = {}
        if self.mpp:  # pixels per cm at this level
            per_cm = 10_000 / self.mpp / 2**level
            resolution = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
        return {
            "shape": (height, width, 3),
            "dtype": np.uint8,
            "photometric": "rgb",
            "tile": (TILE, TILE),
            "metadata": None,
            "software": "dn",
            **resolution,
            **self._codec.tiff_options(),
        }

    def _top_tiles(self, top: _Level, ready: deque, take: Callable[[], np.ndarray | None]) -> Iterator[bytes]:
        """Level 0's compressed tiles in order, as the rows arrive."""
        while top.received < self.height:
            band = take()
            if band is None or self._aborted:
                raise OutputError("aborted")
            top.add(band)
            top.settle(AHEAD)
            while ready:
                yield ready.popleft()
        top.settle(0)
        while ready:
            yield ready.popleft()

    def _unless_aborted(self, tiles: Iterator[bytes]) -> Iterator[bytes]:
        for data in tiles:
            if self._aborted:
                raise OutputError("aborted")
            yield data

    # The translating thread ----------------------------------------------------------------------

    def _failed(self, e: BaseException) -> BaseException:
        if isinstance(e, KeyboardInterrupt):
            return e
        return OutputError(f"cannot write {self.name}: {os_reason(e) if isinstance(e, OSError) else first_line(e)}")

    @property
    def writing(self) -> bool:
        """Whether the writer thread still runs (False once closed or aborted)."""
        return self._bands.alive

    def write(self, box: Box, pixels: np.ndarray) -> None:
        if self._band is None:
            self._band = np.empty((box.height, self.width, 3), np.uint8)
        self._band[:, box.x : box.x + box.width] = pixels
        if box.x + box.width == self.width:  # the row of tiles is complete
            self._bands.put(self._band)
            self._band = None

    def close(self) -> None:
        """Finish the file (waits for the last tiles and the smaller levels to be written)."""
        self._bands.close()

    def abort(self) -> None:
        """Stop the writer (what it wrote stays: the file is the caller's, see ``outputs.Partial``)."""
        self._aborted = True
        self._bands.abort()


def ome_xml(name: str, width: int, height: int, mpp: float | None, comment: str) -> str:
    """Minimal OME-XML for one RGB image (QuPath / Bio-Formats), ``comment`` kept as an annotation."""
    physical = (
        f' PhysicalSizeX="{mpp}" PhysicalSizeXUnit="µm" PhysicalSizeY="{mpp}" PhysicalSizeYUnit="µm"' if mpp else ""
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        f'<Image ID="Image:0" Name="{escape(name)}"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" '
        f'SizeX="{width}" SizeY="{height}" SizeC="3" SizeZ="1" SizeT="1" Interleaved="true"{physical}>'
        '<Channel ID="Channel:0:0" SamplesPerPixel="3"/><TiffData IFD="0" PlaneCount="1"/></Pixels></Image>'
        '<StructuredAnnotations><CommentAnnotation ID="Annotation:0" Namespace="dn/provenance">'
        f"<Value>{escape(comment)}</Value></CommentAnnotation></StructuredAnnotations></OME>"
    )
