"""Ordinary image files (PNG, JPEG, TIFF...) in and out, through pyvips.

The only module that imports pyvips. Writers write the path they are given; under which name
a finished file appears is ``outputs``' job.
"""

from __future__ import annotations

import os
import queue
import re
import threading
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pyvips

from dn_cli.errors import InputError, OutputError, first_line
from dn_cli.geometry import Box
from dn_cli.images import Canvas, ClosedOnExit, block_thumbnail
from dn_cli.levels import plausible_mpp
from dn_cli.native_paths import native, printable
from dn_cli.stopping import Stop
from dn_cli.strip_tiff import strip_tiff_header
from dn_cli.tiff_image import forget_resolution

SAVE_OPTIONS = {".png": {"compression": 6}, ".jpg": {"Q": 90}, ".jpeg": {"Q": 90}}
PICTURE_SUFFIXES = tuple(SAVE_OPTIONS)
PYRAMID_SUFFIXES = (".tif", ".tiff")
OUTPUT_SUFFIXES = (*SAVE_OPTIONS, *PYRAMID_SUFFIXES)


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


class VipsImage(ClosedOnExit):
    """An image file (PNG, JPEG, TIFF layouts ``tiff_image`` leaves out...) read by region through
    libvips. Formats without random access are decoded once on opening: into memory when small,
    into a temporary file when over 100 MB (libvips' rule), so a big file does not need its size in RAM.
    """

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise InputError(f"input not found: {path}")
        self.path = path
        try:
            image = pyvips.Image.new_from_file(native(path), access="random", fail_on="truncated", revalidate=True)
            self.recorded_mpp = _mpp(image)  # what the file says, plausible or not
            self.mpp = plausible_mpp(self.recorded_mpp)
            self._image = _to_rgb8(image.autorot())  # upright, as viewers show it (a phone's EXIF orientation)
            self._regions = threading.local()  # a libvips region serves one thread
            self.read(Box(0, 0, 1, 1))  # decodes now: a damaged file fails here, never reads grey
        except pyvips.Error as e:
            raise InputError(f"cannot read {path}: {unreadable(e)}") from e
        self.width, self.height = self._image.width, self._image.height

    def __repr__(self) -> str:
        return f"VipsImage({str(self.path)!r}, {self.width}×{self.height})"

    def read(self, box: Box) -> np.ndarray:
        region = getattr(self._regions, "region", None)
        if region is None:
            region = self._regions.region = pyvips.Region.new(self._image)
        try:
            data = region.fetch(box.x, box.y, box.width, box.height)
        except pyvips.Error as e:
            raise InputError(f"cannot read {self.path.name}: {unreadable(e)}") from e
        return np.frombuffer(data, np.uint8).reshape(box.height, box.width, 3)

    def thumbnail(self, max_side: int) -> np.ndarray:
        return block_thumbnail(self, max_side)

    def close(self) -> None:
        self._image = None


def unreadable(error: pyvips.Error) -> str:
    """Why libvips could not read a file, in words."""
    if "unable to load from file" in str(error):
        return "not a slide or image format dn reads (or damaged)"
    reason = vips_reason(error)
    temporary = re.search(r'unable to write to "([^"]+)"', str(error))  # big pictures decode to a file
    if temporary or reason in ("no space left on device", "disk quota exceeded"):
        folder = Path(temporary[1]).parent if temporary else Path(os.environ.get("TMPDIR") or "/tmp")
        return f"no room to decode it in {folder} ({reason}): point TMPDIR at a folder with space"
    return f"damaged or incomplete ({reason})"


def _mpp(image: pyvips.Image) -> float | None:
    """µm per pixel if the file records a physical resolution (TIFF-like files say what theirs means)."""
    if "resolution-unit" in image.get_fields() and image.xres > 0:
        return round(1000 / image.xres, 6)  # libvips keeps pixels per mm
    return None


def check_output(path: Path) -> None:
    """Refuse an output file name dn cannot write, before any work is done for it."""
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise OutputError(f"cannot write {path.name}: the extension must be one of {', '.join(OUTPUT_SUFFIXES)}")
    if path.is_dir():
        raise OutputError(f"{path} is a folder")


class ImageFileSink(Canvas):
    """Assembles a PNG or JPEG output in memory and saves it to ``path`` (format by suffix, JPEG at
    ``quality``) when closed."""

    def __init__(
        self, path: Path, width: int, height: int, quality: int | None = None, name: str | None = None
    ) -> None:
        check_size(Path(name or path.name), width, height)  # opened before any tile is translated
        super().__init__(width, height)
        self.path, self.quality, self.name = path, quality, name

    def close(self) -> None:
        save_picture(self.pixels, self.path, self.quality, self.name)


def image_info(path: Path) -> dict:
    """Size, pyramid levels and pixel size (µm, when the file records one) of an image file."""
    if not path.is_file():
        raise InputError(f"input not found: {path}")
    try:
        image = pyvips.Image.new_from_file(native(path))
    except pyvips.Error as e:
        raise InputError(f"cannot read {path}: {unreadable(e)}") from e
    fields = image.get_fields()
    levels = image.get("n-pages") if "n-pages" in fields else 1
    mpp = plausible_mpp(_mpp(image))
    image = image.autorot()  # the size dn translates
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


TIFF_COMPRESSIONS = ("jpeg", "deflate", "lzw", "webp", "none")


class PyramidTiffSink:
    """Streams output tiles into a pyramidal tiled TIFF while the image is being translated.

    Tiles arrive in raster order; each finished row of tiles goes, as it is, to a writer thread
    where libvips reads it as the next rows of an uncompressed TIFF (``strip_tiff``) and builds
    every pyramid level as the rows pass, writing them to ``path``. Memory holds a row of tiles
    and a short queue, whatever the image height. ``close`` completes the file; ``abort`` stops
    the writer. (The file is the caller's: ``outputs.Partial`` gives it its final name, or deletes it.)

    Args:
        path: the file to write.
        width, height: image size in pixels.
        mpp: pixel size in µm, recorded as resolution in pixels per cm (None: not recorded).
        compression: one of ``TIFF_COMPRESSIONS``; ``quality`` applies to jpeg and webp.
        description: stored as the TIFF ImageDescription (provenance).
        ome: OME-TIFF (pyramid in SubIFDs, OME-XML).
        name: the output's name, for OME-XML and messages (default: the file's).
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
    ) -> None:
        self.path, self.width, self.height, self.mpp = path, width, height, mpp
        self.name = name or path.name
        self._band: np.ndarray | None = None  # the row of tiles being filled
        self._bands: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=2)
        # The stream libvips reads: the header, then the bands' bytes as they arrive.
        self._header = memoryview(strip_tiff_header(width, height))
        self._size = len(self._header) + width * height * 3
        self._position = 0
        self._current, self._current_start = memoryview(b""), len(self._header)  # the band being read
        self._ended = False  # the end marker was taken from the queue
        self._failure: BaseException | None = None
        self._aborted = False
        options = {
            "tile": True,
            "tile_width": 256,
            "tile_height": 256,
            "pyramid": True,
            "bigtiff": True,
            "compression": compression,
        }
        if compression in ("jpeg", "webp"):
            options["Q"] = quality
        if mpp:
            options.update(xres=1000 / mpp, yres=1000 / mpp, resunit="cm")  # libvips takes pixels per mm
        if ome:  # pyramid levels as SubIFDs of the full-resolution image, described by OME-XML
            options["subifd"] = True
            description = ome_xml(printable(self.name), width, height, mpp, description)
        self._thread = threading.Thread(target=self._save, args=(options, description), name="dn-tiffsave", daemon=True)
        self._thread.start()

    def _read(self, size: int) -> bytes | memoryview:
        # Called by libvips (on its own thread) for the next ``size`` bytes of the stream: a strip
        # of rows at a time, served as views of the bands (copied only across a band's end). Past
        # the end, and after an abort, it answers the end, as often as asked.
        pieces = []
        while size > 0 and self._position < self._size:
            piece = self._view(self._position, size)
            if not len(piece):
                break
            pieces.append(piece)
            self._position += len(piece)
            size -= len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _view(self, position: int, size: int) -> memoryview:
        if position < len(self._header):
            return self._header[position : position + size]
        while position >= self._current_start + len(self._current):
            band = None if self._ended else self._bands.get()
            if band is None:
                self._ended = True
                return memoryview(b"")
            self._current_start += len(self._current)
            self._current = memoryview(band).cast("B")
        if position < self._current_start:
            raise OutputError("libvips read back past a row it had read")  # never: tiffload reads in order
        start = position - self._current_start
        return self._current[start : start + size]

    def _seek(self, offset: int, whence: int) -> int:
        self._position = {0: 0, 1: self._position, 2: self._size}[whence] + offset
        return self._position

    def _save(self, options: dict, description: str) -> None:
        try:
            source = pyvips.SourceCustom()
            source.on_read(self._read)
            source.on_seek(self._seek)
            image = pyvips.Image.new_from_source(source, "", access="sequential")
            image = image.copy()
            if description:
                image.set_type(pyvips.GValue.gstr_type, "image-description", description)
            # On abort libvips would otherwise compute and write the whole rest of the image (minutes
            # for a big slide) before it noticed the stream had ended: its own kill flag stops it.
            image.set_progress(True)
            image.signal_connect("eval", lambda im, _progress: im.set_kill(True) if self._aborted else None)
            image.tiffsave(native(self.path), **options)
        except BaseException as e:  # reported to the translating thread by _put / close
            self._failure = e

    def _put(self, data: np.ndarray | None) -> None:
        while self._thread.is_alive():
            try:
                self._bands.put(data, timeout=0.5)
                return
            except queue.Full:
                Stop.check()  # the writer is behind: a stop asked for meanwhile is heard here
        if data is not None or self._failure is not None:  # the end marker may find the writer done
            self._raise_failure()

    def _raise_failure(self) -> None:
        e = self._failure
        message = vips_reason(e) if e is not None else "the writer stopped"
        raise OutputError(f"cannot write {self.name}: {message}") from e

    def write(self, box: Box, pixels: np.ndarray) -> None:
        if self._band is None:
            self._band = np.empty((box.height, self.width, 3), np.uint8)
        self._band[:, box.x : box.x + box.width] = pixels
        if box.x + box.width == self.width:  # the row of tiles is complete
            self._put(self._band)
            self._band = None

    def close(self) -> None:
        """Finish the file (waits for libvips to write the last rows and the pyramid)."""
        self._put(None)
        while self._thread.is_alive():
            self._thread.join(timeout=0.5)  # in slices: Ctrl-C and SIGTERM are heard meanwhile
            Stop.check()
        if self._failure is not None:
            self._raise_failure()
        if not self.mpp:
            try:
                forget_resolution(self.path)
            except Exception as e:  # tifffile's kinds; the file is the caller's to discard
                raise OutputError(f"cannot write {self.name}: {e}") from e

    def abort(self) -> None:
        """Stop the writer (what it wrote stays: the file is the caller's, see ``outputs.Partial``)."""
        self._failure = self._failure or OutputError("aborted")
        self._aborted = True
        while self._thread.is_alive():
            try:
                self._bands.put(None, timeout=0.1)  # ends the stream: libvips fails on the short image
            except queue.Full:
                try:
                    self._bands.get_nowait()
                except queue.Empty:
                    pass


def vips_reason(error: BaseException) -> str:
    """What libvips says went wrong, in words: the operating system's reason where it gives one
    (``no space left on device``), else its first detail."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        reason = line.removeprefix("system error:").strip()
        if reason != line and not reason.lower().startswith("unknown error"):
            return reason.lower()
    details = [line for line in lines if not line.startswith("unable to call")]
    return (details or [first_line(error)])[0]


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


def open_sink(
    path: Path,
    width: int,
    height: int,
    *,
    mpp: float | None,
    compression: str,
    quality: int,
    description: str,
    ome: bool = False,
    name: str | None = None,
) -> ImageFileSink | PyramidTiffSink:
    """A pyramidal TIFF for ``.tif`` paths (OME-TIFF with ``ome``), an in-memory PNG / JPEG otherwise."""
    if path.suffix.lower() in PYRAMID_SUFFIXES:
        return PyramidTiffSink(
            path,
            width,
            height,
            mpp=mpp,
            compression=compression,
            quality=quality,
            description=description,
            ome=ome,
            name=name,
        )
    return ImageFileSink(path, width, height, quality, name)


def write_test_slide(path: Path, sample: Path, size: int) -> None:
    """A ``size × size`` slide of real tissue for benchmarks: ``sample`` (the bundled slide)
    repeated, as a tiled pyramidal JPEG TIFF at its pixel size."""
    image = pyvips.Image.new_from_file(str(sample))
    repeats = -(-size // min(image.width, image.height))
    tiled = _to_rgb8(image).replicate(repeats, repeats).crop(0, 0, size, size)
    mpp = _mpp(image) or 0.5
    resolution = {"xres": 1000 / mpp, "yres": 1000 / mpp, "resunit": "cm"}  # libvips takes pixels per mm
    tiled.tiffsave(str(path), tile=True, pyramid=True, compression="jpeg", Q=90, **resolution)


def image_description(path: Path) -> str | None:
    """The ImageDescription of a TIFF (None for other files, or where there is none)."""
    try:
        image = pyvips.Image.new_from_file(native(path))
        return image.get("image-description") if "image-description" in image.get_fields() else None
    except pyvips.Error:
        return None


def thumbnail_file(path: Path, width: int, height: int) -> np.ndarray:
    """An image file shrunk to ``width × height`` (from its pyramid when it has one)."""
    return _to_rgb8(pyvips.Image.thumbnail(native(path), width, height=height, size="force")).numpy()


MAX_SIDE = {".jpg": 65535, ".jpeg": 65535}  # what the format can hold


def check_size(path: Path, width: int, height: int) -> None:
    """Refuse, before the work, an output its format cannot hold."""
    most = MAX_SIDE.get(path.suffix.lower())
    if most is not None and max(width, height) > most:
        raise OutputError(
            f"{path.name} would be {width} × {height} pixels: JPEG holds at most {most} a side; write a .tif or .png"
        )


def save_picture(pixels: np.ndarray, path: Path, quality: int | None = None, name: str | None = None) -> None:
    """Write uint8 RGB pixels to ``path``, PNG or JPEG by its suffix (JPEG at ``quality``, else 90);
    errors name the file ``name`` (the final name of a temporary ``path``)."""
    options = SAVE_OPTIONS[path.suffix.lower()]
    if quality is not None and "Q" in options:
        options = {**options, "Q": quality}
    try:
        image = pyvips.Image.new_from_array(np.ascontiguousarray(pixels), interpretation="srgb")
        image.write_to_file(native(path), **options)
    except pyvips.Error as e:
        raise OutputError(f"cannot write {name or path.name}: {vips_reason(e)}") from e
