"""The fidelity benchmark's yardsticks (scripts/fidelity.py), kept honest on small cases."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import torch

from dn_cli.images import ArrayImage, Canvas
from dn_cli.metrics import local_reference, ring_errors, ring_masks
from dn_cli.models import Generator
from dn_cli.pipeline import TileRunner, translate

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
    study = importlib.util.spec_from_file_location("moment_stride_study", SCRIPTS / "moment_stride_study.py")
    module = importlib.util.module_from_spec(study)
    study.loader.exec_module(module)
    image = np.ascontiguousarray(tissue[40:240, 100:430])  # ragged last row and column of tiles
    expected = module.FineDN(affine_model(), image, 64, 16, 64).translate()
    canvas = Canvas(330, 200)
    runner = TileRunner(Generator(affine_model(), "t", {}, 2), torch.device("cpu"))
    translate(ArrayImage(image), canvas, runner, tile_size=64, margin=16)
    difference = np.abs(canvas.pixels.astype(int) - expected)
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3
    finer = module.FineDN(affine_model(), image, 64, 16, 32).translate()
    assert np.abs(finer.astype(int) - expected).mean() > 0.1  # a finer grid does change the output
