"""Tissue detection and skipping glass tiles."""

import json
from pathlib import Path

import numpy as np
import pytest
import pyvips
import torch
from click.testing import CliRunner

from dn_cli.cli import cli
from dn_cli.geometry import Box, TileGrid
from dn_cli.images import ArrayImage, Canvas
from dn_cli.models import Generator
from dn_cli.output_stage import OutputStage
from dn_cli.pipeline import TileRunner, render_glass, translate
from dn_cli.policies import glass_colour
from dn_cli.sources import open_source
from dn_cli.tissue import otsu_threshold, select_tiles, tissue_mask

from .conftest import affine_model

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample_ihc.tif"


def model_glass(source, grid, runner, active):
    """The fill dn computes for the skipped tiles of ``source``: the model's glass."""
    return glass_colour(source, grid, active, lambda tile: render_glass(runner, source, grid, tile))


def test_otsu_splits_two_populations():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.2, 0.03, 1000), rng.normal(0.7, 0.05, 500)]).clip(0, 1)
    truth = np.arange(1500) >= 1000
    assert ((values > otsu_threshold(values)) == truth).mean() > 0.99
    assert 0 <= otsu_threshold(np.full(100, 0.02)) <= 1  # one population: defined, not NaN


def test_sample_slide_tissue_is_found_and_glass_is_not(tissue):
    with open_source(SAMPLE) as slide:
        grid = TileGrid(slide.width, slide.height, 512, 16)
        active, mask, thumbnail = select_tiles(slide, grid, min_tissue=0.05)
    assert 0.08 < mask.mean() < 0.45  # six sections (with a safety margin) on a mostly empty slide
    assert 5 < active.sum() < len(grid)
    assert not active[0, -1]  # the top-right tile is glass
    glass = np.full((200, 200, 3), 240, np.uint8) + np.random.default_rng(0).integers(0, 4, (200, 200, 1), np.uint8)
    assert not tissue_mask(glass, mpp=8.0).any()
    assert tissue_mask(np.ascontiguousarray(tissue[::8, ::8]), mpp=8.0).mean() > 0.9


class CountingImage(ArrayImage):
    def __init__(self, pixels):
        super().__init__(pixels)
        self.boxes = []

    def read(self, box: Box):
        self.boxes.append(box)
        return super().read(box)


def test_skipped_tiles_are_not_read_and_are_masked_out_of_dn(tissue, generator):
    image = np.ascontiguousarray(tissue[:256, :320])
    active = np.ones((4, 5), bool)
    active[1, 2] = active[3, 0] = False
    runner = TileRunner(generator, torch.device("cpu"))
    outputs = []
    for oracle in (False, True):
        source, canvas = CountingImage(image), Canvas(320, 256)
        canvas.pixels[:] = 7  # what no tile writes: a tile never written shows
        translate(source, canvas, runner, tile_size=64, margin=16, batch_size=3, active=active, two_pass_oracle=oracle)
        outputs.append(canvas.pixels)
        # One read per active tile, plus at most five to learn the model's glass colour (the
        # middle skipped tile, padded from (112, 48), and the thumbnail); the other skipped tile,
        # read as Box(0, 176, 80, 80), never.
        assert active.sum() < len(source.boxes) <= active.sum() + 5
        assert Box(0, 176, 80, 80) not in source.boxes
    np.testing.assert_array_equal(outputs[0], outputs[1])
    fill = outputs[0][192:256, 0:64]
    assert (fill == fill[0, 0]).all() and (outputs[0][64:128, 128:192] == fill[0, 0]).all()
    expected = model_glass(ArrayImage(image), TileGrid(320, 256, 64, 16), runner, active)  # the model's glass
    assert (fill[0, 0] == expected).all() and (outputs[0] != 7).any(axis=2).all()  # and every pixel written


def test_skipped_tiles_take_the_models_glass_not_the_inputs(tissue):
    """Tissue on the left, glass on the right, skipped: the fill is the glass of the same image
    translated without skipping (the model renders glass far from the input's colour)."""
    rng = np.random.default_rng(0)
    image = (np.array([236, 232, 240]) + rng.integers(-2, 3, (192, 384, 3))).astype(np.uint8)
    image[:, :150] = tissue[:192, :150]
    active = np.zeros((3, 6), bool)
    active[:, :3] = True  # the third column holds the tissue's edge and 42 pixels of glass
    runner = TileRunner(Generator(affine_model(), "test", {}, 2), torch.device("cpu"))
    outputs = []
    for skip in (None, active):
        canvas = Canvas(384, 192)
        translate(ArrayImage(image), canvas, runner, tile_size=64, margin=16, batch_size=3, active=skip)
        outputs.append(canvas.pixels)
    models_glass = np.median(outputs[0][:, 160:], axis=(0, 1))  # translated glass, tile by tile
    assert np.abs(models_glass - image[:, 160:].mean(axis=(0, 1))).max() > 50
    fill = outputs[1][:, 192:].reshape(-1, 3).astype(float)
    assert np.abs(fill.mean(axis=0) - models_glass).max() <= 4
    assert np.abs(fill - models_glass).max() <= 6  # matched to its translated neighbours, never far off


@pytest.mark.parametrize("batch_size", [1, 3, 5])
def test_a_row_of_skipped_tiles_is_filled_whole(tissue, generator, batch_size):
    """Apply steps whose tiles are all skipped still write them (the glass in raster order)."""
    image = np.ascontiguousarray(tissue[:256, :320])
    active = np.ones((4, 5), bool)
    active[2] = False
    canvas = Canvas(320, 256)
    canvas.pixels[:] = 7
    runner = TileRunner(generator, torch.device("cpu"))
    translate(ArrayImage(image), canvas, runner, tile_size=64, margin=16, batch_size=batch_size, active=active)
    expected = model_glass(ArrayImage(image), TileGrid(320, 256, 64, 16), runner, active)
    assert (canvas.pixels[128:192] == expected).all()
    assert (canvas.pixels != 7).any(axis=2).all()


def test_cli_skips_glass_on_slides_by_default_and_saves_a_qc_overlay(tmp_path):
    out, qc, preview = tmp_path / "out.tif", tmp_path / "qc" / "mask.png", tmp_path / "previews"
    result = CliRunner().invoke(
        cli,
        [
            "translate",
            str(SAMPLE),
            "-o",
            str(out),
            "--level",
            "1",
            "--tile-size",
            "256",
            "-q",
            "--json",
            "--tissue-mask",
            str(qc),
            "--preview",
            str(preview),
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert 0 < record["tiles_skipped"] < record["tiles"]
    assert pyvips.Image.new_from_file(str(qc)).width > 100
    side_by_side = pyvips.Image.new_from_file(str(preview / "sample_ihc_preview.png"))
    assert side_by_side.width > 2 * side_by_side.height  # input | output of a landscape slide
    none = CliRunner().invoke(
        cli,
        [
            "translate",
            str(SAMPLE),
            "-o",
            str(tmp_path / "all.tif"),
            "--no-tissue",
            "-q",
            "--json",
            "--level",
            "2",
            "--tile-size",
            "128",
        ],
    )
    assert json.loads(none.stdout)["tiles_skipped"] == 0


def test_preview_outline_marks_the_mask_border():
    from dn_cli.preview import OUTLINE, side_by_side

    before = np.full((40, 60, 3), 200, np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:15, 5:20] = True
    picture = side_by_side(before, before.copy(), mask)
    assert picture.shape == (40, 60 + 8 + 60, 3)
    green = (picture == OUTLINE).all(axis=2)
    assert green[:, :60].any() and not green[:, 60:].any() and not green[15, 20]  # inside the mask: untouched


def test_tissue_selection_without_a_pixel_size(tissue):
    # An ordinary image with --tissue: no µm known, so a fixed thumbnail and a small cleanup.
    glass = np.full((512, 1024, 3), 242, np.uint8)
    glass[:, :512] = tissue
    grid = TileGrid(1024, 512, 256, 16)
    active, mask, _ = select_tiles(ArrayImage(glass), grid, min_tissue=0.0)
    assert active[:, :2].all() and not active[:, 3].any()


def test_preview_shows_input_and_output_at_the_same_scale(tmp_path, tissue, checkpoint):
    # 1700 × 1000 into an 800-pixel preview: the input shrinks by a whole factor (3, to 566 × 333)
    # and the output is shrunk to that same size, not to 800 and then cut to the input's height.
    source = tmp_path / "wide.png"
    big = pyvips.Image.new_from_array(np.ascontiguousarray(tissue), interpretation="srgb").replicate(4, 2)
    big.crop(0, 0, 1700, 1000).write_to_file(str(source))
    preview = tmp_path / "p.png"
    args = ["translate", str(source), "-o", str(tmp_path / "o.tif"), "--preview", str(preview), "-q"]
    assert CliRunner().invoke(cli, [*args, "--model", str(checkpoint), "--norm", "in"]).exit_code == 0
    picture = pyvips.Image.new_from_file(str(preview))
    assert (picture.width, picture.height) == (566 + 8 + 566, 333)


def test_skipped_tiles_meet_the_translated_glass_beside_them():
    """The model's glass differs a few grey levels from tile to tile: a skipped tile takes, on each
    side, the glass across it, blended smoothly inside (no step at its edges, none within it)."""
    grid = TileGrid(192, 192, 64, 16)  # 3 × 3 tiles of 64
    background = np.array([240, 238, 245], np.uint8)
    shades = {0: 236, 1: 243, 2: 239, 3: 241, 5: 237, 6: 244, 7: 235, 8: 240}  # all but the centre translated
    tiles = {i: np.full((64, 64, 3), shade, np.uint8) for i, shade in shades.items()}
    canvas = Canvas(192, 192)
    stage = OutputStage(canvas, grid, background, skipping=True)
    for start in (0, 3, 6):
        translated = [i for i in range(start, start + 3) if i in tiles]
        stage.put(range(start, start + 3), translated, lambda t=translated: np.stack([tiles[i] for i in t]))
    stage.close()
    fill = canvas.pixels[64:128, 64:128].astype(int)
    assert np.abs(fill[0, 16:48] - 243).max() <= 1 and np.abs(fill[-1, 16:48] - 235).max() <= 1  # above, below
    assert np.abs(fill[16:48, 0] - 241).max() <= 1 and np.abs(fill[16:48, -1] - 237).max() <= 1  # left, right
    assert np.abs(np.diff(fill, axis=0)).max() <= 1 and np.abs(np.diff(fill, axis=1)).max() <= 1  # smooth
    # A skipped tile with glass all around (no translated neighbour) is the image's glass colour.
    canvas = Canvas(192, 64)
    stage = OutputStage(canvas, TileGrid(192, 64, 64, 16), background, skipping=True)
    stage.put(range(0, 3), [0], lambda: np.full((1, 64, 64, 3), 236, np.uint8))
    stage.close()
    assert (canvas.pixels[:, 128:] == background).all()


def test_skipped_glass_is_the_glass_dn_renders_when_it_is_not_skipped(tissue, demo_generator):
    """Tissue on noisy glass, the glass tiles skipped: the fill is what dn renders there when every
    tile is translated (flat tiles carry the image's moments, as the model run on the whole
    image normalises glass). Before, the pale tissue of a translated neighbour set it: 41 levels
    from the untiled model's glass on scripts/halo_study.py, 3 now."""
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(241, 1.5, (512, 512, 1)).repeat(3, axis=2), 0, 255).astype(np.uint8)
    image[128:384, 128:384] = tissue[128:384, 128:384]
    active = np.zeros((4, 4), bool)
    active[1:3, 1:3] = True
    runner = TileRunner(demo_generator, torch.device("cpu"))
    every, skipped = Canvas(512, 512), Canvas(512, 512)
    translate(ArrayImage(image), every, runner, tile_size=128, margin=16)
    translate(ArrayImage(image), skipped, runner, tile_size=128, margin=16, active=active)
    glass = np.ones((512, 512), bool)
    glass[96:416, 96:416] = False
    rendered = np.median(every.pixels[glass], axis=0)
    fill = skipped.pixels[:24, :24].reshape(-1, 3)  # a corner: no translated tile beside it
    assert (fill == fill[0]).all() and np.abs(fill[0] - rendered).max() <= 1
