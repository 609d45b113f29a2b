"""Whole-slide input through OpenSlide: levels, pixel size, background, errors."""

import json

import numpy as np
import openslide
import pytest
import pyvips
import tifffile
from click.testing import CliRunner

from dn_cli.cli import cli
from dn_cli.errors import InputError
from dn_cli.geometry import Box
from dn_cli.images import opaque
from dn_cli.slides import SlideImage
from dn_cli.sources import open_source


@pytest.fixture(scope="module")
def slide(tmp_path_factory, tissue):
    """1024 × 768 of real tissue as a tiled pyramidal TIFF at 0.25 µm/px (losslessly compressed)."""
    pixels = np.ascontiguousarray(np.pad(tissue, ((0, 256), (0, 512), (0, 0)), mode="symmetric")[:768, :1024])
    path = tmp_path_factory.mktemp("slides") / "slide.tif"
    pyvips.Image.new_from_array(pixels, interpretation="srgb").tiffsave(
        str(path), tile=True, pyramid=True, compression="deflate", xres=4000, yres=4000, resunit="cm"
    )
    return path, pixels


def test_full_resolution_reads_are_the_pixels(slide):
    path, pixels = slide
    with open_source(path) as source:
        assert isinstance(source, SlideImage)
        assert (source.width, source.height, source.mpp) == (1024, 768, 0.25)
        np.testing.assert_array_equal(source.read(Box(100, 50, 300, 200)), pixels[50:250, 100:400])


def test_level_and_mpp_choose_the_resolution(slide):
    path, pixels = slide
    with SlideImage(path, level=1) as level1:
        assert (level1.width, level1.height, level1.mpp) == (512, 384, 0.5)
    with SlideImage(path, mpp=1.0) as coarse:  # level 2 exactly
        assert (coarse.level, coarse.scale, coarse.width) == (2, 1.0, 256)
    with SlideImage(path, mpp=0.75) as between:  # read level 1 (0.5), shrink by 1.5 with an area average
        assert (between.level, between.width, between.height) == (1, 341, 256)
        assert between.mpp == pytest.approx(0.75)
        patch = between.read(Box(10, 10, 40, 40))
    # Independently: the file's level 1 from OpenSlide, pixels 15..75 (level-0 30..150), each output
    # pixel the overlap-weighted mean of the 1.5 × 1.5 level-1 pixels it covers.
    with openslide.OpenSlide(str(path)) as raw:
        level1 = np.asarray(raw.read_region((30, 30), 1, (60, 60)))[..., :3].astype(float)
    edges = np.arange(41) * 1.5
    weights = np.clip(np.minimum(edges[1:, None], np.arange(1, 61)) - np.maximum(edges[:-1, None], np.arange(60)), 0, 1)
    expected = np.einsum("yi,xj,ijc->yxc", weights, weights, level1) / 2.25
    assert np.abs(patch - expected).max() <= 1


def test_missing_pixel_size_suggests_the_override(tmp_path, tissue):
    path = tmp_path / "nompp.tif"
    tifffile.imwrite(path, tissue, tile=(256, 256), photometric="rgb")  # no resolution tags at all
    with pytest.raises(InputError, match="--mpp-override"):
        SlideImage(path, mpp=1.0)
    with SlideImage(path, mpp=1.0, mpp_override=0.5) as slide:
        assert (slide.width, slide.mpp) == (256, 1.0)
    with pytest.raises(InputError, match="levels 0 to"):
        SlideImage(path, level=9)


def test_the_override_never_replaces_a_recorded_pixel_size(slide, tmp_path, tissue):
    path, _ = slide  # records 0.25 µm
    with open_source(path, mpp_override=0.5) as source:
        assert source.mpp == 0.25
    with open_source(path, mpp=1.0, mpp_override=0.5) as source:
        assert (source.width, source.mpp) == (256, 1.0)  # level 2 of a 0.25 µm scan, not level 1 of 0.5
    picture = tmp_path / "pic.png"
    pyvips.Image.new_from_array(tissue, interpretation="srgb").write_to_file(str(picture))
    with open_source(picture, mpp_override=0.5) as source:  # records nothing (a 72 dpi default): taken
        assert source.mpp == 0.5


def test_straight_alpha_is_composited_onto_the_given_background():
    # The slide's own background colour reaches this through a real MIRAX slide:
    # tests/test_vendor_formats.py::test_a_mirax_slide_fills_what_was_never_scanned_with_its_background
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = [200, 100, 50, 255]  # opaque
    rgba[1, 1] = [200, 100, 50, 128]  # half transparent
    out = opaque(rgba, np.array([10, 20, 30], np.uint16))
    assert out[0, 0].tolist() == [200, 100, 50] and out[0, 1].tolist() == [10, 20, 30]
    assert out[1, 1].tolist() == [105, 60, 40]


def test_translate_a_slide_at_a_chosen_pixel_size(tmp_path, slide, checkpoint):
    path, _ = slide
    out = tmp_path / "out.tif"
    result = CliRunner().invoke(
        cli,
        [
            "translate",
            str(path),
            "-o",
            str(out),
            "--model",
            str(checkpoint),
            "--mpp",
            "0.5",
            "--tile-size",
            "128",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    info = json.loads(CliRunner().invoke(cli, ["info", str(out), "--json"]).stdout)
    assert (info["kind"], info["width"], info["height"], info["mpp"]) == ("slide", 512, 384, 0.5)
    with tifffile.TiffFile(out) as tif:  # the resolution tags themselves: 20000 pixels per cm
        tags = tif.pages[0].tags
        assert tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        assert tags["XResolution"].value[0] / tags["XResolution"].value[1] == pytest.approx(20000)
        assert tags["YResolution"].value[0] / tags["YResolution"].value[1] == pytest.approx(20000)


def test_level_and_mpp_on_an_ordinary_image_are_refused(tmp_path, tissue, checkpoint):
    png = tmp_path / "a.png"
    pyvips.Image.new_from_array(np.ascontiguousarray(tissue)).write_to_file(str(png))
    result = CliRunner().invoke(cli, ["translate", str(png), "-o", str(tmp_path / "o.tif"), "--level", "1"])
    assert result.exit_code == 1 and "has one resolution only" in result.stderr


def test_thumbnail_is_the_area_average_of_the_level_it_comes_from(slide):
    # 1024 × 768 into 300 pixels: level 1 (512 × 384) shrunk by 1.7067, each thumbnail pixel the
    # overlap-weighted mean of the level pixels it covers (PIL's BOX, used before, is not that).
    path, _ = slide
    with SlideImage(path) as source:
        thumb = source.thumbnail(300).astype(float)
    assert thumb.shape == (225, 300, 3)
    with openslide.OpenSlide(str(path)) as raw:
        level1 = np.asarray(raw.read_region((0, 0), 1, (512, 384)))[..., :3].astype(float)

    def weights(n_out: int, n_in: int) -> np.ndarray:
        edges = np.arange(n_out + 1) * n_in / n_out
        cells = np.arange(n_in)
        return np.clip(np.minimum(edges[1:, None], cells + 1) - np.maximum(edges[:-1, None], cells), 0, 1)

    wy, wx = weights(225, 384), weights(300, 512)
    expected = np.einsum("yi,xj,ijc->yxc", wy, wx, level1, optimize=True)
    expected /= wy.sum(1)[:, None, None] * wx.sum(1)[None, :, None]
    assert np.abs(thumb - expected).max() <= 0.5 + 1e-9  # rounding only


@pytest.mark.parametrize("output_format", ["tiff", "ome-tiff"])
def test_an_output_never_claims_a_pixel_size_nobody_gave(tmp_path, tissue, checkpoint, output_format):
    # libvips writes 1 pixel per mm into every TIFF it is given no resolution for: dn's outputs
    # of an image without a pixel size said 1000 µm/px to OpenSlide and QuPath.
    source = tmp_path / "nompp.tif"
    tifffile.imwrite(source, tissue, tile=(256, 256), photometric="rgb")  # no resolution tags
    out = tmp_path / ("out.ome.tif" if output_format == "ome-tiff" else "out.tif")
    args = ["translate", str(source), "-o", str(out), "--model", str(checkpoint), "--format", output_format, "-q"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    with openslide.OpenSlide(str(out)) as written:
        assert openslide.PROPERTY_NAME_MPP_X not in written.properties
    with tifffile.TiffFile(out) as tif:
        levels = [level.keyframe for level in tif.series[0].levels]
        assert len(levels) > 1
        assert {page.tags["ResolutionUnit"].value for page in levels} == {tifffile.RESUNIT.NONE}
    with open_source(out) as again:
        assert again.mpp is None


def test_a_screen_resolution_is_not_taken_for_a_pixel_size(tmp_path, tissue, checkpoint):
    source = tmp_path / "export.tif"  # 72 dpi: 352.8 µm per pixel, what an image editor writes
    tifffile.imwrite(source, tissue, tile=(256, 256), photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    with open_source(source) as slide:
        assert slide.recorded_mpp == pytest.approx(352.78, abs=0.01) and slide.mpp is None
    out = tmp_path / "out.tif"
    result = CliRunner().invoke(cli, ["translate", str(source), "-o", str(out), "--model", str(checkpoint), "-q"])
    assert result.exit_code == 0
    assert "352.778 µm per pixel is a screen or print default" in result.stderr
    assert json.loads((tmp_path / "out.tif.json").read_text())["mpp"] is None
    args = ["translate", str(source), "-o", str(tmp_path / "given.tif"), "--model", str(checkpoint), "-q"]
    result = CliRunner().invoke(cli, [*args, "--mpp-override", "0.5"])
    assert result.exit_code == 0 and result.stderr == ""
    with openslide.OpenSlide(str(tmp_path / "given.tif")) as written:
        assert float(written.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
