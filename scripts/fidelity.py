"""Fidelity of each normalisation policy against the truth, ring by ring of the tile grid.

    python scripts/fidelity.py                      # both models, tile 128, mosaic seeds 0 and 1
    python scripts/fidelity.py --tile-size 64 --json

Two supervised generators whose true output is known for every pixel, both trained on
scikit-image's IHC photograph by colour deconvolution (``scripts/train_demo_model.py``): the
bundled demo model (DAB → AEC) and a re-stain (DAB → eosin, ``scripts/weights/``). Each is run
on the photograph untiled (one tile: the model as trained) and tiled under ``in``, ``kin``,
``tin``, ``dn`` and ``dn half`` (``--moment-stride half``), and every output is compared, ring
by ring (``metrics.ring_masks``: edge tiles, interior tiles, their centres and their seam bands):

- with the truth: the photograph re-stained by colour deconvolution (what the model learnt);
- with the local reference: the model run on a tile-sized window centred on every 32-pixel
  block (``metrics.local_reference``) — every pixel normalised with its own neighbourhood's
  moments, which DN interpolates from the tile centres around it.

Seam scores (``metrics.seam_score``) on mosaics of the photograph (144-pixel pieces, seeded
positions, turns and flips; piece borders never on a tile border) say whether a policy leaves
a grid; the untiled forward's score on the same mosaic is the floor. Results: docs/quality.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import skimage.data
import torch

from dn_cli.geometry import default_margin
from dn_cli.images import ArrayImage, Canvas
from dn_cli.metrics import RINGS, local_reference, ring_errors, ring_masks, seam_score
from dn_cli.models import DEMO_MODEL, load_generator
from dn_cli.pipeline import TileRunner, translate
from dn_cli.policies import POLICIES

SCRIPTS = Path(__file__).resolve().parent
RESTAIN_MODEL = SCRIPTS / "weights" / "dab2he_resnet_ngf16.pth"
PIECE = 144  # mosaic pieces: lcm(144, 128) = 1152, so no piece border falls on a 64- or 128-pixel tile border


def training_script():
    spec = importlib.util.spec_from_file_location("train_demo_model", SCRIPTS / "train_demo_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def translated(image: np.ndarray, runner: TileRunner, **options) -> np.ndarray:
    canvas = Canvas(image.shape[1], image.shape[0])
    translate(ArrayImage(image), canvas, runner, **options)
    return canvas.pixels


def untiled(image: np.ndarray, runner: TileRunner) -> np.ndarray:
    """The model on the whole image at once (one tile, no margin): as it was trained to run."""
    side = -(-max(image.shape[:2]) // runner.stride) * runner.stride
    return translated(image, runner, policy="in", tile_size=side, margin=0)


def outputs(image: np.ndarray, runner: TileRunner, tile_size: int) -> dict[str, np.ndarray]:
    made = {"untiled": untiled(image, runner)}
    for policy in POLICIES:
        made[policy] = translated(image, runner, policy=policy, tile_size=tile_size)
    made["dn half"] = translated(image, runner, policy="dn", tile_size=tile_size, moment_stride=tile_size // 2)
    return made


def mosaic(image: np.ndarray, seed: int, pieces: int = 5) -> np.ndarray:
    """``pieces`` × ``pieces`` crops of ``image``, each at a seeded place, turned and flipped."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(pieces):
        row = []
        for _ in range(pieces):
            y, x = rng.integers(0, image.shape[0] - PIECE + 1), rng.integers(0, image.shape[1] - PIECE + 1)
            piece = np.rot90(image[y : y + PIECE, x : x + PIECE], int(rng.integers(4)))
            row.append(piece[:, ::-1] if rng.integers(2) else piece)
        rows.append(np.concatenate(row, axis=1))
    return np.ascontiguousarray(np.concatenate(rows, axis=0))


def measure(name: str, model: Path, truth_of, image: np.ndarray, tile_size: int, seeds: list[int]) -> dict:
    runner = TileRunner(load_generator(model), torch.device("cpu"))
    margin = default_margin(tile_size, runner.stride)
    made = outputs(image, runner, tile_size)
    rings = ring_masks(*image.shape[:2], tile_size)
    truth, local = truth_of(image), local_reference(image, runner, tile_size + 2 * margin)
    seams = {}
    for seed in seeds:
        piecework = mosaic(image, seed)
        scores = {key: seam_score(pixels, tile_size) for key, pixels in outputs(piecework, runner, tile_size).items()}
        seams[seed] = {key: round(score, 3) for key, score in scores.items()}
    return {
        "model": name,
        "tile_size": tile_size,
        "margin": margin,
        "truth": {key: rounded(ring_errors(pixels, truth, rings)) for key, pixels in made.items()},
        "local": {key: rounded(ring_errors(pixels, local, rings)) for key, pixels in made.items()},
        "local_vs_truth": rounded(ring_errors(local, truth, rings)),
        "seams": seams,
    }


def rounded(errors: dict[str, float]) -> dict[str, float]:
    return {ring: round(value, 2) for ring, value in errors.items()}


def table(errors: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| output | " + " | ".join(RINGS) + " |", "|---" * (len(RINGS) + 1) + "|"]
    for key, by_ring in errors.items():
        best = {ring: min(e[ring] for k, e in errors.items() if k != "untiled") for ring in RINGS}
        cells = [
            f"**{by_ring[r]:.2f}**" if key != "untiled" and by_ring[r] == best[r] else f"{by_ring[r]:.2f}"
            for r in RINGS
        ]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def report(result: dict) -> list[str]:
    lines = [f"### {result['model']} (tile {result['tile_size']}, margin {result['margin']})", ""]
    lines += ["Mean |output − truth| (grey levels):", "", *table(result["truth"]), ""]
    lines += ["Mean |output − local reference|:", "", *table(result["local"]), ""]
    lines += [f"The local reference itself, from the truth: {result['local_vs_truth']}", ""]
    keys = list(next(iter(result["seams"].values())))
    lines += ["Seam scores on mosaics:", "", "| seed | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {seed} | " + " | ".join(f"{s[k]:.3f}" for k in keys) + " |" for seed, s in result["seams"].items()]
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile-size", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="mosaic seeds for the seam scores")
    parser.add_argument("--json", action="store_true", help="one JSON object per model instead of tables")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    stains = training_script()
    image = skimage.data.immunohistochemistry()
    models = [("DAB → AEC (bundled demo model)", DEMO_MODEL, stains.dab_to_aec)]
    models.append(("DAB → eosin (re-stain)", RESTAIN_MODEL, stains.dab_to_eosin))
    for name, model, truth_of in models:
        result = measure(name, model, truth_of, image, args.tile_size, args.seeds)
        print(json.dumps(result) if args.json else "\n".join(report(result)), flush=True)


if __name__ == "__main__":
    main()
