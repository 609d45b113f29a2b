"""Inputs OpenSlide does not open — stripped TIFFs, OME-TIFF pyramids in SubIFDs, ordinary images —
read region by region, so memory holds what is being translated, not the whole image."""

import json
import os
import subprocess
import sys

import numpy as np
import openslide
import pytest
import pyvips
import tifffile
from click.testing import CliRunner

from dn_cli.cli import cli
from dn_cli.geometry import Box
from dn_cli.image_io import VipsImage
from dn_cli.sources import open_source
from dn_cli.tiff_image import TiffImage

BOXES = [Box(0, 0, 300, 200), Box(13, 37, 150, 120), Box(290, 190, 10, 10), Box(5, 150, 1, 50)]


def dn(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def libvips_pixels(path) -> np.ndarray:
    """The whole image as libvips decodes it, sRGB, transparency onto white (the reference)."""
    image = pyvips.Image.new_from_file(str(path))
    if image.hasalpha():
        image = image.flatten(background=[255] * (image.bands - 1))
    if image.format != "uchar":
        image = image.colourspace("srgb").cast("uchar")
    if image.bands == 1:
        image = image.bandjoin([image, image])
    return image.numpy()


LAYOUTS = {
    "stripped raw, 7 rows a strip": ({"rowsperstrip": 7}, "rgb"),
    "stripped deflate, 64 rows": ({"compression": "zlib", "rowsperstrip": 64}, "rgb"),
    "stripped lzw, one strip": ({"compression": "lzw", "rowsperstrip": 200}, "rgb"),
    "stripped jpeg": ({"compression": "jpeg", "rowsperstrip": 16}, "rgb"),
    "grey": ({"compression": "zlib", "rowsperstrip": 32}, "grey"),
    "rgba": ({"rowsperstrip": 32}, "rgba"),
    "16-bit (libvips reads it)": ({"rowsperstrip": 32}, "16-bit"),
    "planar (libvips reads it)": ({"rowsperstrip": 32, "planarconfig": "separate"}, "rgb"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tiff_layouts_read_by_region_equal_the_whole_decoded_image(tmp_path, tissue, layout):
    options, colour = LAYOUTS[layout]
    pixels = np.ascontiguousarray(tissue[:200, :300])
    photometric = "rgb"
    if colour == "grey":
        pixels, photometric = pixels[..., 1].copy(), "minisblack"
    elif colour == "rgba":
        alpha = np.random.default_rng(0).integers(0, 256, pixels.shape[:2], np.uint8)
        pixels = np.dstack([pixels, alpha])
    elif colour == "16-bit":
        pixels = pixels.astype(np.uint16) * 257
    if options.get("planarconfig") == "separate":
        pixels = np.ascontiguousarray(pixels.transpose(2, 0, 1))  # tifffile takes planes first
    path = tmp_path / "image.tif"
    extra = {"extrasamples": ["unassalpha"]} if colour == "rgba" else {}
    tifffile.imwrite(path, pixels, photometric=photometric, **options, **extra)
    expected = libvips_pixels(path)
    with open_source(path) as source:
        assert isinstance(source, VipsImage if "libvips" in layout else TiffImage)
        assert (source.width, source.height) == (300, 200)
        for box in BOXES:
            got = source.read(box).astype(int)
            want = expected[box.y : box.y + box.height, box.x : box.x + box.width]
            assert np.abs(got - want).max() <= (1 if colour == "rgba" else 0), box  # compositing rounds


@pytest.fixture(scope="module")
def ome_output(tmp_path_factory, tissue):
    """dn's own OME-TIFF output (pyramid in SubIFDs) of a 1536² tissue image at 0.5 µm/px."""
    folder = tmp_path_factory.mktemp("ome")
    big = pyvips.Image.new_from_array(np.ascontiguousarray(tissue), interpretation="srgb").replicate(3, 3)
    source = folder / "big.png"
    big.write_to_file(str(source))
    out = folder / "big.ome.tif"
    result = dn("translate", source, "-o", out, "--format", "ome-tiff", "--mpp-override", 0.5, "--norm", "in", "-q")
    assert result.exit_code == 0, result.output
    return out


def test_dn_ome_tiff_output_translates_again_at_each_level_and_pixel_size(tmp_path, ome_output, checkpoint):
    with tifffile.TiffFile(ome_output) as tif:
        assert tif.is_ome and len(tif.series[0].levels) >= 3  # the pyramid is there, in SubIFDs
    for option, value, size, mpp in [("--level", 1, 768, 1.0), ("--level", 2, 384, 2.0), ("--mpp", 1.5, 512, 1.5)]:
        out = tmp_path / f"again_{option[2:]}_{value}.tif"
        result = dn("translate", ome_output, "-o", out, option, value, "--model", checkpoint, "-q")
        assert result.exit_code == 0, result.output
        with openslide.OpenSlide(str(out)) as again:
            assert again.dimensions == (size, size)
            assert float(again.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(mpp, rel=1e-3)
            assert json.loads(out.with_name(out.name + ".json").read_text())["mpp"] == pytest.approx(mpp)


def test_a_level_read_from_the_ome_pyramid_is_that_level(ome_output):
    with tifffile.TiffFile(ome_output) as tif:
        level1 = tif.series[0].levels[1].asarray()
    with open_source(ome_output, level=1) as source:
        assert isinstance(source, TiffImage) and source.mpp == pytest.approx(1.0)
        np.testing.assert_array_equal(source.read(Box(100, 200, 300, 250)), level1[200:450, 100:400])
        assert max(source.thumbnail(200).shape[:2]) <= 200


def test_reads_of_different_levels_through_one_image_never_mix(ome_output):
    """Every level's decoded segments are cached apart: a thumbnail (from a coarse level) between
    two reads of the full resolution returns that level's pixels, and the reads stay the same."""
    with tifffile.TiffFile(ome_output) as tif:
        levels = [level.asarray() for level in tif.series[0].levels[:3]]
    with open_source(ome_output) as source:
        box = Box(0, 0, 400, 300)  # the first segments of every level
        np.testing.assert_array_equal(source.read(box), levels[0][:300, :400])
        np.testing.assert_array_equal(source.thumbnail(384), levels[2])  # 1536 / 4: level 2 as it is
        np.testing.assert_array_equal(source.thumbnail(768), levels[1])
        np.testing.assert_array_equal(source.read(box), levels[0][:300, :400])


def test_a_stripped_tiff_translates_as_the_same_pixels_in_a_png(tmp_path, tissue, checkpoint):
    pixels = np.ascontiguousarray(tissue[:300, :400])
    stripped, picture = tmp_path / "stripped.tif", tmp_path / "same.png"
    tifffile.imwrite(stripped, pixels, photometric="rgb", compression="zlib", rowsperstrip=16)
    pyvips.Image.new_from_array(pixels, interpretation="srgb").write_to_file(str(picture))
    outputs = []
    for source in (stripped, picture):
        out = tmp_path / f"{source.stem}_out.png"
        result = dn("translate", source, "-o", out, "--model", checkpoint, "--tile-size", 128, "-q")
        assert result.exit_code == 0, result.output
        outputs.append(pyvips.Image.new_from_file(str(out)).numpy())
    np.testing.assert_array_equal(*outputs)


@pytest.mark.parametrize("damage", ["cut short", "a header only"])
def test_a_damaged_tiff_is_one_line_naming_the_file(tmp_path, tissue, checkpoint, damage):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, tissue, photometric="rgb", compression="zlib", rowsperstrip=16)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3] if damage == "cut short" else data[:4] + bytes(100))
    command = [sys.executable, "-m", "dn_cli", "translate", str(path), "-o", str(tmp_path / "o.tif")]
    result = subprocess.run([*command, "--model", str(checkpoint), "-q"], capture_output=True, text=True)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # the libraries print none of their own
    assert "cut.tif" in result.stderr and "damaged" in result.stderr
    assert not (tmp_path / "o.tif").exists()


PEAK_RSS = """
import sys
from pathlib import Path
from dn_cli.geometry import Box
from dn_cli.sources import open_source
with open_source(Path(sys.argv[1])) as source:
    for y in range(0, source.height - 544, 2048):
        for x in range(0, source.width - 544, 512):
            source.read(Box(x, y, 544, 544))
    source.thumbnail(1024)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(int(status["VmHWM"].split()[0]) * 1024)  # this program's peak (ru_maxrss would count the parent's, from fork)
"""


def test_a_big_stripped_tiff_is_read_without_holding_it(tmp_path, tissue):
    """4096 × 24576 (302 MB of pixels), one stripped BigTIFF: tiles and the thumbnail are read with
    the process never holding half of it (before, the whole image was decoded into memory)."""
    path = tmp_path / "big.tif"
    big = pyvips.Image.new_from_array(np.ascontiguousarray(tissue), interpretation="srgb").replicate(8, 48)
    big.tiffsave(str(path), bigtiff=True, compression="deflate")
    assert not openslide.OpenSlide.detect_format(str(path))  # so not OpenSlide's to read
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(path)], capture_output=True, text=True, check=True)
    peak = int(done.stdout.strip())
    assert peak < 4096 * 24576 * 3 / 2, f"peak RSS {peak / 2**20:.0f} MB"


def test_a_big_picture_without_temporary_space_says_so(tmp_path, tissue, checkpoint):
    """A PNG decoded into over 100 MB goes to a temporary file (libvips): where TMPDIR cannot
    take it, the one line says so rather than calling the picture damaged."""
    big = tmp_path / "big.png"
    pyvips.Image.new_from_array(np.ascontiguousarray(tissue), interpretation="srgb").replicate(12, 12).pngsave(
        str(big), compression=1
    )
    command = [sys.executable, "-m", "dn_cli", "translate", str(big), "-o", str(tmp_path / "o.tif")]
    env = {**os.environ, "TMPDIR": str(tmp_path / "missing")}
    result = subprocess.run([*command, "--model", str(checkpoint), "-q"], capture_output=True, text=True, env=env)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no room to decode it in" in result.stderr and "TMPDIR" in result.stderr
    assert "damaged" not in result.stderr
