"""The pyramidal TIFF writer: every level exact, tiles in order whatever thread compressed them,
readable by tifffile, libvips and OpenSlide, bounded in memory."""

import threading
from pathlib import Path

import numpy as np
import openslide
import pytest
import pyvips
import tifffile

from dn_cli.geometry import Box
from dn_cli.pyramid_tiff import PyramidTiffSink
from dn_cli.tiff_tiles import TIFF_COMPRESSIONS, halve, level_sizes


def reference_halve(pixels: np.ndarray) -> np.ndarray:
    """The rounded mean of each 2 × 2 block, in plain integers (an odd last row or column left out)."""
    h, w = pixels.shape[0] // 2 * 2, pixels.shape[1] // 2 * 2
    p = pixels[:h, :w].astype(np.int64)
    return ((p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2] + 2) // 4).astype(np.uint8)


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (3, 5), (1, 8), (8, 1), (255, 333), (256, 4096)])
def test_halving_is_the_rounded_mean_of_each_block(shape):
    pixels = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    np.testing.assert_array_equal(halve(pixels), reference_halve(pixels))


def tissue_of(tissue: np.ndarray, height: int, width: int) -> np.ndarray:
    reps = (-(-height // tissue.shape[0]), -(-width // tissue.shape[1]), 1)
    return np.ascontiguousarray(np.tile(tissue, reps)[:height, :width])


def write(path: Path, pixels: np.ndarray, rows: int, **options) -> None:
    """Into a sink as the pipeline does: rows of tiles ``rows`` high, each tile 200 wide."""
    height, width = pixels.shape[:2]
    sink = PyramidTiffSink(path, width, height, **options)
    for y in range(0, height, rows):
        for x in range(0, width, 200):
            box = Box(x, y, min(200, width - x), min(rows, height - y))
            sink.write(box, pixels[box.y : box.y + box.height, box.x : box.x + box.width])
    sink.close()


@pytest.mark.parametrize("size", [(600, 200), (513, 1025), (5000, 10), (257, 3), (1, 1)])
def test_levels_are_those_libvips_makes(tmp_path, size):
    width, height = size
    pyvips.Image.black(width, height, bands=3).tiffsave(
        str(tmp_path / "v.tif"), tile=True, tile_width=256, tile_height=256, pyramid=True
    )
    with tifffile.TiffFile(tmp_path / "v.tif") as tif:
        assert level_sizes(width, height) == [(p.imagewidth, p.imagelength) for p in tif.pages]


@pytest.mark.parametrize("rows", [60, 256, 512])  # strips cut across the rows of tiles, and along them
def test_every_level_is_the_one_above_halved_exactly(tmp_path, tissue, rows):
    pixels = tissue_of(tissue, 1111, 1333)  # odd sides: every level drops a row or column somewhere
    write(tmp_path / "o.tif", pixels, rows, compression="deflate", mpp=0.25)
    with tifffile.TiffFile(tmp_path / "o.tif") as tif:
        levels = [level.asarray() for level in tif.series[0].levels]
        resolutions = [page.tags["XResolution"].value for page in tif.pages]
    assert [(lv.shape[1], lv.shape[0]) for lv in levels] == level_sizes(1333, 1111) and len(levels) == 4
    np.testing.assert_array_equal(levels[0], pixels)
    for k in range(1, len(levels)):
        np.testing.assert_array_equal(levels[k], reference_halve(levels[k - 1]))
        np.testing.assert_array_equal(pyvips.Image.new_from_file(str(tmp_path / "o.tif"), page=k).numpy(), levels[k])
    assert [n / d for n, d in resolutions] == [40000 / 2**k for k in range(4)]  # pixels per cm at each level
    with openslide.OpenSlide(str(tmp_path / "o.tif")) as slide:
        assert slide.level_dimensions == tuple(level_sizes(1333, 1111))
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        region = np.asarray(slide.read_region((0, 0), 2, (333, 277)))[..., :3]
        np.testing.assert_array_equal(region, levels[2][:277, :333])


@pytest.mark.parametrize("compression", TIFF_COMPRESSIONS)
def test_every_compression_reads_back_alike_in_tifffile_and_libvips(tmp_path, tissue, compression):
    pixels = tissue_of(tissue, 700, 900)
    write(tmp_path / "o.tif", pixels, 128, compression=compression, quality=90)
    read = tifffile.imread(tmp_path / "o.tif")
    np.testing.assert_array_equal(pyvips.Image.new_from_file(str(tmp_path / "o.tif")).numpy(), read)
    error = np.abs(read.astype(int) - pixels).mean()
    assert error == 0 if compression in ("deflate", "lzw", "none") else 0 < error < 3
    if compression != "webp":  # OpenSlide's libtiff has no WebP
        with openslide.OpenSlide(str(tmp_path / "o.tif")) as slide:
            np.testing.assert_array_equal(np.asarray(slide.read_region((0, 0), 0, (900, 700)))[..., :3], read)


def test_tiles_land_in_order_whatever_thread_compresses_them(tmp_path, tissue):
    """Compressed in a pool, written in order: one thread or eight, the same bytes."""
    pixels = tissue_of(tissue, 1800, 2300)
    for workers in (1, 8):
        write(tmp_path / f"{workers}.tif", pixels, 300, workers=workers, description="same")
    assert (tmp_path / "1.tif").read_bytes() == (tmp_path / "8.tif").read_bytes()


def test_the_levels_below_wait_on_disk_not_in_memory_and_leave_nothing(tmp_path, tissue):
    """A tall image: what is held is a few strips per level, whatever the height; the smaller
    levels' tiles wait in an unnamed file that is gone at the end."""
    import tracemalloc

    width, height = 2048, 49152
    strip = tissue_of(tissue, 512, width)
    tracemalloc.start()  # numpy's arrays and the compressed tiles are traced, on every thread
    try:
        sink = PyramidTiffSink(tmp_path / "o.tif", width, height, compression="none")
        for y in range(0, height, 512):
            sink.write(Box(0, y, width, 512), strip)
        sink.close()
        peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    assert peak_mb < 40, peak_mb  # the image is 302 MB, its smaller levels 101 MB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tif"]
    assert not [t for t in threading.enumerate() if t.name.startswith("dn-tiff")]
    with tifffile.TiffFile(tmp_path / "o.tif") as tif:
        np.testing.assert_array_equal(tif.pages[0].asarray()[-512:], strip)
