"""Pyramidal TIFF output, streamed while translating: readable by OpenSlide and tifffile."""

import json
import threading

import numpy as np
import ome_types
import openslide
import pytest
import pyvips
import tifffile
import torch
from click.testing import CliRunner

from dn_cli.cli import cli
from dn_cli.errors import InputError
from dn_cli.geometry import Box
from dn_cli.images import ArrayImage, Canvas
from dn_cli.outputs import Partial
from dn_cli.pipeline import TileRunner, translate
from dn_cli.pyramid_tiff import PyramidTiffSink


def slide_file(path, pixels, mpp=0.5):
    """A generic tiled pyramidal TIFF with a pixel size, as a scanner export would be."""
    pyvips.Image.new_from_array(pixels, interpretation="srgb").tiffsave(
        str(path), tile=True, pyramid=True, compression="jpeg", Q=90, xres=1000 / mpp, yres=1000 / mpp, resunit="cm"
    )
    return path


@pytest.fixture(scope="module")
def tissue_2000x3000(tissue):
    """2000 wide × 3000 high, real tissue mirrored out."""
    return np.ascontiguousarray(np.pad(tissue, ((0, 2488), (0, 1488), (0, 0)), mode="symmetric"))


def test_slide_comes_out_the_same_size_with_levels_and_pixel_size(tmp_path, tissue_2000x3000, checkpoint):
    source = slide_file(tmp_path / "slide.tif", tissue_2000x3000)
    out = tmp_path / "out" / "slide_dn.tif"
    result = CliRunner().invoke(cli, ["translate", str(source), "-o", str(out), "--model", str(checkpoint), "-q"])
    assert result.exit_code == 0, result.output
    with openslide.OpenSlide(str(out)) as slide:
        assert slide.dimensions == (2000, 3000)
        assert slide.level_count >= 3
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.5)
    with tifffile.TiffFile(out) as tif:
        levels = tif.series[0].levels
        assert levels[0].shape == (3000, 2000, 3) and len(levels) >= 3
        record = json.loads(tif.pages[0].description)
    assert record["software"].startswith("dn ") and len(record["model_sha256"]) == 64 and record["mpp"] == 0.5
    assert json.loads((out.parent / "slide_dn.tif.json").read_text()) == record
    assert sorted(p.name for p in out.parent.iterdir()) == ["slide_dn.tif", "slide_dn.tif.json"]


def quantisation_tables(jpeg: bytes) -> dict[int, bytes]:
    """The DQT tables of a JPEG stream (or a TIFF's JPEGTables), by table id."""
    tables, at = {}, 0
    while (at := jpeg.find(b"\xff\xdb", at)) >= 0:
        length = int.from_bytes(jpeg[at + 2 : at + 4], "big")
        segment = jpeg[at + 4 : at + 2 + length]
        for start in range(0, len(segment), 65):  # 8-bit tables: an id byte and 64 values
            tables[segment[start] & 15] = segment[start + 1 : start + 65]
        at += 2 + length
    return tables


@pytest.mark.parametrize("option, quality", [((), 85), (("--quality", "60"), 60)])
def test_tiff_output_is_jpeg_at_quality_85_unless_asked(tmp_path, tissue, checkpoint, option, quality):
    picture = tmp_path / "in.png"
    pyvips.Image.new_from_array(np.ascontiguousarray(tissue), interpretation="srgb").write_to_file(str(picture))
    out = tmp_path / "out.tif"
    args = ["translate", str(picture), "-o", str(out), "--model", str(checkpoint), "--norm", "in", "-q", *option]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    with tifffile.TiffFile(out) as tif:
        assert all(page.compression == tifffile.COMPRESSION.JPEG for page in tif.pages)
        tables = quantisation_tables(tif.pages[0].jpegtables)
    # libjpeg's tables for that quality, as libvips writes them into a plain JPEG
    reference = pyvips.Image.black(16, 16, bands=3).jpegsave_buffer(Q=quality)
    assert tables == quantisation_tables(reference)
    assert tables != quantisation_tables(pyvips.Image.black(16, 16, bands=3).jpegsave_buffer(Q=quality + 1))


@pytest.mark.parametrize("tile_size", [64, 60])  # rows of tiles a multiple of the 16-row strips, and not
def test_lossless_pyramid_holds_exactly_the_translation(tmp_path, tissue, generator, tile_size):
    image = np.ascontiguousarray(tissue[:300, :350])
    runner = TileRunner(generator, torch.device("cpu"))
    canvas = Canvas(350, 300)
    translate(ArrayImage(image), canvas, runner, tile_size=tile_size)
    out = tmp_path / "o.tif"
    translate(ArrayImage(image), PyramidTiffSink(out, 350, 300, compression="deflate"), runner, tile_size=tile_size)
    np.testing.assert_array_equal(pyvips.Image.new_from_file(str(out)).numpy(), canvas.pixels)


class FailingImage(ArrayImage):
    """An image whose reads fail part-way, like a slide with a corrupt region (or a user's Ctrl-C)."""

    def __init__(self, pixels, fail_after, error):
        super().__init__(pixels)
        self.reads_left, self.error = fail_after, error

    def read(self, box: Box):
        self.reads_left -= 1
        if self.reads_left < 0:
            raise self.error
        return super().read(box)


@pytest.mark.parametrize("policy", ["dn", "in"])
@pytest.mark.parametrize("error", [InputError("corrupt tile"), KeyboardInterrupt()])
def test_a_failure_mid_way_stops_the_writer_and_leaves_no_file(tmp_path, tissue, generator, policy, error):
    runner = TileRunner(generator, torch.device("cpu"))
    partial = Partial(tmp_path / "o.tif")
    sink = PyramidTiffSink(partial.path, 512, 512)
    with pytest.raises(type(error)):
        try:
            translate(FailingImage(np.ascontiguousarray(tissue), 20, error), sink, runner, policy=policy, tile_size=64)
        finally:
            partial.discard()  # what the job does with a failed slide's file
    assert not sink.writing
    assert [t.name for t in threading.enumerate() if t.name.startswith("dn-")] == []  # readers, writer, libvips
    assert list(tmp_path.iterdir()) == []


def test_kill_leaves_no_output_and_no_temporary(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    sample = Path(__file__).resolve().parents[1] / "examples" / "sample_ihc.tif"
    out = tmp_path / "out.tif"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dn_cli",
            "translate",
            str(sample),
            "-o",
            str(out),
            "--no-tissue",
            "--tile-size",
            "256",
            "-q",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.tif.*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # until the temporary output exists: translation has begun
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "dn: interrupted" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


def blocks(pixels: np.ndarray, side: int) -> np.ndarray:
    """Means of ``side × side`` blocks (a remainder left out)."""
    h, w = pixels.shape[0] // side, pixels.shape[1] // side
    return pixels[: h * side, : w * side].reshape(h, side, w, side, 3).mean(axis=(1, 3))


def test_ome_tiff_for_bio_formats(tmp_path, tissue_2000x3000, checkpoint):
    source = slide_file(tmp_path / "slide.tif", tissue_2000x3000[:1024, :1536])
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        [
            "translate",
            str(source),
            "-o",
            str(out) + "/",
            "--model",
            str(checkpoint),
            "--format",
            "ome-tiff",
            "--no-tissue",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    path = out / "slide.ome.tif"
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and len(tif.pages) == 1  # one IFD: the pyramid hides in its SubIFDs
        levels = [level.asarray() for level in tif.series[0].levels]
        xml = tif.ome_metadata
    # What Bio-Formats reads: OME-XML valid against the OME 2016-06 schema, describing the image...
    ome_types.validate_xml(xml)
    (image,) = ome_types.from_xml(xml).images
    pixels = image.pixels
    assert (pixels.size_x, pixels.size_y, pixels.size_c, pixels.type.value) == (1536, 1024, 3, "uint8")
    assert pixels.physical_size_x == pixels.physical_size_y == 0.5 and pixels.physical_size_x_unit.value == "µm"
    assert pixels.channels[0].samples_per_pixel == 3 and pixels.tiff_data_blocks[0].ifd == 0
    assert any("model_sha256" in a.value for a in ome_types.from_xml(xml).structured_annotations.comment_annotations)
    # ...and SubIFD levels that halve each time and hold the image: read by libvips too, each the
    # one above shrunk (compared in 8 × 8 blocks: JPEG's loss on the noisy random model averages out).
    assert [level.shape for level in levels] == [(1024 >> k, 1536 >> k, 3) for k in range(len(levels))]
    assert len(levels) >= 3
    for k in range(1, len(levels)):
        np.testing.assert_array_equal(pyvips.Image.new_from_file(str(path), subifd=k - 1).numpy(), levels[k])
        assert np.abs(blocks(levels[k - 1], 16) - blocks(levels[k], 8)).mean() < 2, k


def test_a_failure_before_the_first_tile_stops_the_writer(tmp_path, tissue, generator):
    active = np.ones((8, 8), bool)
    active[0, 0] = False  # learning the glass colour reads first, and fails
    sink = PyramidTiffSink(tmp_path / "o.tif", 512, 512)
    with pytest.raises(InputError):
        translate(
            FailingImage(np.ascontiguousarray(tissue), 0, InputError("unreadable")),
            sink,
            TileRunner(generator, torch.device("cpu")),
            tile_size=64,
            active=active,
        )
    assert not sink.writing
