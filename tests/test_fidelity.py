"""The fidelity benchmark's yardsticks (scripts/fidelity.py), kept honest on small cases."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from dn_cli.dense_norm import DenseNorm2d
from dn_cli.geometry import Box, MomentGrid, TileGrid
from dn_cli.images import ArrayImage, Canvas
from dn_cli.metrics import local_reference, ring_errors, ring_masks
from dn_cli.models import Generator
from dn_cli.pipeline import TileRunner, translate
from dn_cli.schedule import by_tile_rows

from .conftest import affine_model

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_the_local_reference_is_the_model_on_a_window_around_each_block(tissue):
    """Against a slow direct computation: numpy's mirror padding, the plain model in float64."""
    image = np.ascontiguousarray(tissue[:100, :150])  # blocks run past both edges
    window, block = 48, 16
    got = local_reference(
        image, TileRunner(Generator(affine_model(), "test", {}, 2), torch.device("cpu")), window, block
    )
    model = copy.deepcopy(affine_model()).double()
    offset = (window - block) // 2
    padded = np.pad(image, ((offset, offset + block), (offset, offset + block), (0, 0)), mode="reflect")
    expected = np.zeros_like(image)
    with torch.no_grad():
        for y in range(0, 100, block):
            for x in range(0, 150, block):
                crop = torch.from_numpy(padded[y : y + window, x : x + window].astype(np.float64))
                out = model(crop.permute(2, 0, 1)[None] / 127.5 - 1)[
                    0, :, offset : offset + block, offset : offset + block
                ]
                pixels = ((out + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
                expected[y : y + block, x : x + block] = pixels[: min(block, 100 - y), : min(block, 150 - x)]
    difference = np.abs(got.astype(int) - expected)
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3  # float32 against float64 rounding


def test_rings_split_the_grid_as_documented():
    rings = ring_masks(512, 512, 128)
    assert rings["all"].sum() == 512 * 512
    assert rings["border"].sum() == 12 * 128 * 128 and rings["interior"].sum() == 4 * 128 * 128
    assert rings["centre"].sum() == 4 * 32 * 32 and rings["seam"].sum() == 4 * (128 * 128 - 96 * 96)
    assert not (rings["centre"] & rings["seam"]).any() and not (rings["border"] & rings["interior"]).any()
    ragged = ring_masks(200, 330, 64)  # a partial last row and column are border tiles
    assert ragged["border"][199].all() and ragged["border"][:, 329].all() and ragged["interior"][64:128, 64:256].all()
    errors = ring_errors(np.full((512, 512, 3), 10, np.uint8), np.zeros((512, 512, 3), np.uint8), rings)
    assert errors == dict.fromkeys(rings, 10.0)


def test_the_moment_stride_study_at_the_tile_stride_is_dn(tissue):
    """The study's slow DN on a finer moment grid (scripts/moment_stride_study.py), at S = T, is
    dn's own output: what it says of S = T/2 rests on the same maths."""
    module = load_study()
    image = np.ascontiguousarray(tissue[40:240, 100:430])  # ragged last row and column of tiles
    expected = module.FineDN(affine_model(), image, 64, 16, 64).translate()
    canvas = Canvas(330, 200)
    runner = TileRunner(Generator(affine_model(), "t", {}, 2), torch.device("cpu"))
    translate(ArrayImage(image), canvas, runner, tile_size=64, margin=16)
    difference = np.abs(canvas.pixels.astype(int) - expected)
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3
    finer = module.FineDN(affine_model(), image, 64, 16, 32).translate()
    assert np.abs(finer.astype(int) - expected).mean() > 0.1  # a finer grid does change the output


def load_study():
    study = importlib.util.spec_from_file_location("moment_stride_study", SCRIPTS / "moment_stride_study.py")
    module = importlib.util.module_from_spec(study)
    study.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fused", [False, True], ids=["fields", "fused"])
def test_moments_every_half_tile_are_the_studys_slow_dn(tissue, fused):
    """--moment-stride half in the pipeline (eager and as compiled models run it) against the
    study's float64 DN at S = T/2, blending each tile's 3 × 3 windows as dn does."""
    image = np.ascontiguousarray(tissue[40:240, 100:430])  # ragged last row and column of tiles
    expected = load_study().FineDN(affine_model(), image, 64, 16, 32).translate()
    runner = TileRunner(Generator(affine_model(), "t", {}, 2), torch.device("cpu"))
    for layer in runner.module.modules():
        if isinstance(layer, DenseNorm2d):
            layer.fused = fused
    for batch_size in (1, 4):
        canvas = Canvas(330, 200)
        translate(ArrayImage(image), canvas, runner, tile_size=64, margin=16, batch_size=batch_size, moment_stride=32)
        difference = np.abs(canvas.pixels.astype(int) - expected)
        assert difference.max() <= 1 and (difference > 0).mean() < 1e-3, batch_size


def test_moments_every_half_tile_skip_glass_and_fill_every_pixel(tissue):
    image = np.ascontiguousarray(tissue[:256, :320])
    active = np.ones((4, 5), bool)
    active[1, 2] = active[3, 0] = active[0, 4] = False
    outputs = []
    for batch_size in (1, 3):
        canvas = Canvas(320, 256)
        canvas.pixels[:] = 7
        runner = TileRunner(Generator(affine_model(), "t", {}, 2), torch.device("cpu"))
        options = {"tile_size": 64, "margin": 16, "batch_size": batch_size, "active": active}
        translate(ArrayImage(image), canvas, runner, **options, moment_stride=32)
        outputs.append(canvas.pixels.copy())
    assert np.array_equal(outputs[0], outputs[1]) and (outputs[0] != 7).any(axis=2).all()
    plain = Canvas(320, 256)
    runner = TileRunner(Generator(affine_model(), "t", {}, 2), torch.device("cpu"))
    translate(ArrayImage(image), plain, runner, tile_size=64, margin=16, active=active)
    assert np.abs(plain.pixels.astype(int) - outputs[0]).mean() > 0.1  # the finer grid is used


def test_the_window_grid_at_the_tile_stride_is_the_tile_grid():
    tiles = TileGrid(330, 200, 64, 16)
    same = MomentGrid(tiles, 64)
    assert (same.rows, same.cols) == (tiles.rows, tiles.cols)
    for i in range(len(tiles)):
        assert same.padded_box(*same.position(i)) == tiles.padded_box(*tiles.position(i))
        assert same.inside(*same.position(i)) == tiles.inside(*tiles.position(i)) and same.tiles_of(i) == [i]
    half = MomentGrid(tiles, 32)
    assert (half.rows, half.cols) == (7, 11) and half.padded_box(1, 1) == Box(16, 16, 96, 96)
    assert half.tiles_of(1) == [0, 1] and half.tiles_of(half.cols + 1) == [0, 1, 6, 7] and half.tiles_of(2) == [1]
    steps = by_tile_rows(tiles.rows, tiles.cols, 2, 4)
    collected = set()
    for step in steps:
        if step.kind == "collect":
            collected |= set(step.tiles)
            continue
        for tile in step.tiles:  # every window of its neighbourhood (inside the grid) is collected first
            row, col = tiles.position(tile)
            needed = {
                a * half.cols + b
                for a in range(max(0, 2 * row - 1), min(half.rows, 2 * row + 2))
                for b in range(max(0, 2 * col - 1), min(half.cols, 2 * col + 2))
            }
            assert needed <= collected
    assert collected == set(range(len(half)))
    assert sorted(t for s in steps if s.kind == "apply" for t in s.tiles) == list(range(len(tiles)))
