"""TIFFs that OpenSlide does not open — stripped (untiled), OME with its pyramid in SubIFDs,
BigTIFF exports — read region by region: only the strips or tiles a region covers are read
and decoded, so memory stays bounded whatever the image's size.

The only module that reads TIFFs with tifffile (``pyramid_tiff`` writes them).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import OrderedDict
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import tifffile

from dn_cli.errors import InputError
from dn_cli.geometry import Box
from dn_cli.images import ImageSource, area_shrink, block_thumbnail, opaque
from dn_cli.levels import choose_resolution, plausible_mpp

logging.getLogger("tifffile").addHandler(logging.NullHandler())  # dn says what is wrong with a file itself

SEGMENT_LIMIT = 64 << 20  # a strip or tile bigger than this decoded is left to libvips
CACHE_BYTES = 32 << 20  # at least this much of decoded segments kept: a band of strips serves a row of tiles

_PHOTOMETRIC = {tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB}
_JPEG = {tifffile.COMPRESSION.JPEG, tifffile.COMPRESSION.OJPEG}


class Unsupported(Exception):
    """A TIFF layout not read here segment by segment (16-bit, planar, palette...): libvips reads it."""


def is_tiff(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
    except OSError:
        return False


def is_ome(path: Path) -> bool:
    """Whether a TIFF is an OME-TIFF (its pyramid, if any, in SubIFDs)."""
    try:
        with tifffile.TiffFile(path) as tif:
            return tif.is_ome
    except Exception:  # damaged: whoever opens it says why
        return False


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def incomplete(path: Path) -> str | None:
    """Why a TIFF is cut short or damaged — a directory or a level's data past the end of the file —
    or None. Every directory is walked (SubIFD levels too): a pyramid whose small levels were
    cut off must not pass for whole (``dn info``) or fall back to reading what is left."""
    size = path.stat().st_size
    recorder = _Recorder()
    logger = logging.getLogger("tifffile")
    logger.addHandler(recorder)  # tifffile logs, rather than raises, a chain of directories that breaks off
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            for series in tif.series:  # SubIFD levels (OME) are in their series' levels only
                pages += [page for level in series.levels[1:] for page in level.pages if page is not None]
            if any(offset >= size for page in tif.pages for offset in page.subifds or ()):
                return "a pyramid level lies past its end"
            for page in pages:
                ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False) if n]
                if ends and max(ends) > size:
                    return f"its {page.imagewidth} × {page.imagelength} level ends past the end of the file"
    except Exception:  # tifffile's many kinds: a directory it cannot parse
        return "its directories are cut off or damaged"
    finally:
        logger.removeHandler(recorder)
    return "its directories are cut off or damaged" if recorder.messages else None


def other_images(path: Path) -> int:
    """How many full-resolution images a TIFF holds besides its first (pages of a stack, not
    levels of its pyramid, which are marked reduced)."""
    try:
        with tifffile.TiffFile(path) as tif:
            return max(0, sum(not page.subfiletype & tifffile.FILETYPE.REDUCEDIMAGE for page in tif.pages) - 1)
    except Exception:  # damaged: open_source has said so already
        return 0


class _Level:
    """One pyramid level: its segments (strips or tiles) read with ``pread`` and decoded by tifffile."""

    def __init__(self, page: tifffile.TiffPage, fd: int, name: str) -> None:
        samples = page.samplesperpixel
        if page.dtype != np.uint8 or samples not in (1, 3, 4) or page.imagedepth != 1:
            raise Unsupported(f"{page.dtype} with {samples} samples per pixel")
        if samples > 1 and page.planarconfig != tifffile.PLANARCONFIG.CONTIG:
            raise Unsupported("separate colour planes")
        ycbcr_jpeg = page.photometric == tifffile.PHOTOMETRIC.YCBCR and page.compression in _JPEG
        if page.photometric not in _PHOTOMETRIC and not ycbcr_jpeg:
            raise Unsupported(f"photometric {page.photometric.name}")
        self.page, self.fd, self.name = page, fd, name
        self.width, self.height, self.samples = page.imagewidth, page.imagelength, samples
        self.segment_height, self.segment_width = page.chunks[:2]
        self.across = math.ceil(self.width / self.segment_width)
        if self.segment_height * self.segment_width * samples > SEGMENT_LIMIT:
            raise Unsupported(f"strips of {self.segment_height} rows")
        self._decode_args = {}  # tiles at the image's edge may come back cropped: readers clip to the shape
        if page.compression in _JPEG:
            self._decode_args = {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader}

    def decode(self, index: int) -> np.ndarray:
        """Segment ``index`` as ``(rows, columns, samples)`` uint8 (white where the file has none)."""
        offset, count = self.page.dataoffsets[index], self.page.databytecounts[index]
        if not count:  # sparse files leave empty tiles out
            return np.full((self.segment_height, self.segment_width, self.samples), 255, np.uint8)
        data = os.pread(self.fd, count, offset)
        try:
            if len(data) < count:
                raise ValueError("the file ends early")
            segment = self.page.decode(data, index, **self._decode_args)[0]
        except Exception as e:  # codecs raise their own kinds on damaged data
            raise InputError(f"cannot read {self.name}: damaged or incomplete ({e})") from e
        segment = segment.reshape(segment.shape[-3:])
        y0, x0 = divmod(index, self.across)
        expected = (
            min(self.segment_height, self.height - y0 * self.segment_height),
            min(self.segment_width, self.width - x0 * self.segment_width),
        )
        if segment.shape[0] < expected[0] or segment.shape[1] < expected[1]:  # never fill with whatever memory held
            raise InputError(f"cannot read {self.name}: damaged or incomplete (segment {index} is {segment.shape[:2]})")
        return segment


class TiffImage(ImageSource):
    """One resolution of a TIFF, read by region through its strips or tiles.

    Arguments as :class:`dn_cli.slides.SlideImage`; the levels are tifffile's pyramid of the
    first image series (SubIFDs, or pages of decreasing size). Raises :class:`Unsupported` for
    layouts read elsewhere.
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
        self.path = path
        try:
            self._tif = tifffile.TiffFile(path)
        except Exception as e:  # tifffile raises many kinds on a damaged file
            raise InputError(f"cannot read {path}: damaged or not a TIFF ({e})") from e
        self._fd = os.open(path, os.O_RDONLY)
        try:
            self.recorded_mpp = _mpp(self._tif)  # what the file says, plausible or not
            self._levels = [_Level(series.keyframe, self._fd, path.name) for series in self._tif.series[0].levels]
            base = self._levels[0]
            downsamples = [(base.width / lv.width + base.height / lv.height) / 2 for lv in self._levels]
            chosen = choose_resolution(
                path.name,
                (base.width, base.height),
                downsamples,
                plausible_mpp(self.recorded_mpp) or mpp_override,
                level=level,
                mpp=mpp,
                allow_upsampling=allow_upsampling,
            )
        except BaseException as e:
            self.close()
            if isinstance(e, Exception) and not isinstance(e, (InputError, Unsupported)):
                raise Unsupported(f"a layout tifffile does not describe ({e})") from e
            raise
        self.level, self.scale, self.downsample, self.mpp = chosen.level, chosen.scale, chosen.downsample, chosen.mpp
        self.width, self.height = chosen.width, chosen.height
        self._at = self._levels[self.level]
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        row_bytes = self._at.width * self._at.samples
        self._cache_limit = max(CACHE_BYTES, 2 * 1024 * row_bytes)  # two 1024-row bands, however wide
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TiffImage({str(self.path)!r}, level={self.level}, {self.width}×{self.height}, mpp={self.mpp})"

    def close(self) -> None:
        self._tif.close()
        os.close(self._fd)

    @property
    def levels(self) -> list[tuple[int, int]]:
        """(width, height) of every level."""
        return [(lv.width, lv.height) for lv in self._levels]

    def read(self, box: Box) -> np.ndarray:
        """``(height, width, 3)`` uint8 RGB of a box in this image's pixels."""
        if self.scale == 1.0:
            return self._read_level(box)
        x, y = round(box.x * self.scale), round(box.y * self.scale)
        needed = Box(x, y, math.ceil(box.width * self.scale), math.ceil(box.height * self.scale))
        inside = Box(x, y, min(needed.width, self._at.width - x), min(needed.height, self._at.height - y))
        pixels = self._read_level(inside)  # the last partial pixel may lie past the level's edge: repeat the edge
        pixels = np.pad(pixels, ((0, needed.height - inside.height), (0, needed.width - inside.width), (0, 0)), "edge")
        return area_shrink(pixels, box.width, box.height, self.scale)

    def thumbnail(self, max_side: int) -> np.ndarray:
        """Block averages of the coarsest level that still has ``max_side`` pixels across this image."""
        if max(self.width, self.height) <= max_side:
            return self.read(Box(0, 0, self.width, self.height))
        target = self.downsample * max(self.width, self.height) / max_side
        base = self._levels[0]
        fine_enough = [lv for lv in self._levels if base.width / lv.width <= target * (1 + 1e-9)]
        coarsest = min(fine_enough, key=lambda lv: lv.width)
        ratio = self.downsample * coarsest.width / base.width  # this image's pixels → the level's
        width, height = round(self.width * ratio), round(self.height * ratio)
        part = _LevelPart(self, coarsest, min(coarsest.width, width), min(coarsest.height, height))
        return block_thumbnail(part, max_side)

    def _read_level(self, box: Box, lv: _Level | None = None) -> np.ndarray:
        lv = lv or self._at
        out = np.empty((box.height, box.width, lv.samples), np.uint8)
        for row in range(box.y // lv.segment_height, (box.y + box.height - 1) // lv.segment_height + 1):
            for col in range(box.x // lv.segment_width, (box.x + box.width - 1) // lv.segment_width + 1):
                segment = self._segment(lv, row * lv.across + col)
                y0, x0 = row * lv.segment_height, col * lv.segment_width
                top, left = max(box.y, y0), max(box.x, x0)
                bottom = min(box.y + box.height, y0 + segment.shape[0])
                right = min(box.x + box.width, x0 + segment.shape[1])
                out[top - box.y : bottom - box.y, left - box.x : right - box.x] = segment[
                    top - y0 : bottom - y0, left - x0 : right - x0
                ]
        return _rgb(out)

    def _segment(self, lv: _Level, index: int) -> np.ndarray:
        key = (id(lv), index)
        with self._lock:
            if (segment := self._cache.get(key)) is not None:
                self._cache.move_to_end(key)
                return segment
        segment = lv.decode(index)  # outside the lock: reader threads decode in parallel
        with self._lock:
            if key not in self._cache:
                self._cache[key] = segment
                self._cached_bytes += segment.nbytes
                while self._cached_bytes > self._cache_limit and len(self._cache) > 1:
                    self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
        return segment


class _LevelPart:
    """The top-left ``width × height`` of a level, as a source ``block_thumbnail`` reads."""

    def __init__(self, image: TiffImage, level: _Level, width: int, height: int) -> None:
        self.image, self.level, self.width, self.height = image, level, width, height

    def read(self, box: Box) -> np.ndarray:
        return self.image._read_level(box, self.level)


def _rgb(pixels: np.ndarray) -> np.ndarray:
    """Grey repeated to RGB; alpha composited onto white."""
    if pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)
    return opaque(pixels) if pixels.shape[2] == 4 else pixels


def _mpp(tif: tifffile.TiffFile) -> float | None:
    """µm per pixel: OME-XML's physical size, else the resolution tags (None where neither says)."""
    if tif.is_ome:
        pixels = ElementTree.fromstring(tif.ome_metadata).find(".//{*}Pixels")
        size = pixels.get("PhysicalSizeX") if pixels is not None else None
        if size and pixels.get("PhysicalSizeXUnit", "µm") in ("µm", "um"):
            return float(size)
    tags = tif.pages[0].tags
    unit, resolution = tags.get("ResolutionUnit"), tags.get("XResolution")
    if unit is None or resolution is None or unit.value not in (2, 3):
        return None
    numerator, denominator = resolution.value
    if not numerator or not denominator:
        return None
    return round((25400 if unit.value == 2 else 10000) * denominator / numerator, 6)  # per inch or per cm
