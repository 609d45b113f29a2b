"""Are the tiles along an image's border further from the untiled forward than interior tiles?

    python scripts/border_study.py

scikit-image's IHC photograph (512²), the same mirrored out to 1024², and a ragged 470 × 450
crop of it, bundled model, tiles of 128 (margin 16): each policy's output against the model run
on the whole image at once (the untiled forward), mean absolute difference in grey levels over
the border ring of tiles and over the interior tiles.
"""

from __future__ import annotations

import json

import numpy as np
import skimage.data
import torch

from dn_cli.images import ArrayImage, Canvas
from dn_cli.models import DEMO_MODEL, load_generator
from dn_cli.pipeline import TileRunner, translate

TILE = 128


def run(image: np.ndarray, runner: TileRunner, **options) -> np.ndarray:
    canvas = Canvas(image.shape[1], image.shape[0])
    translate(ArrayImage(image), canvas, runner, **options)
    return canvas.pixels.astype(int)


def main() -> None:
    runner = TileRunner(load_generator(DEMO_MODEL), torch.device("cpu"))
    tissue = skimage.data.immunohistochemistry()
    results = {}
    images = {
        "512²": tissue,
        "1024²": np.pad(tissue, ((0, 512), (0, 512), (0, 0)), mode="symmetric"),
        "ragged 470 × 450": tissue[:450, :470],  # the last row and column of tiles mostly past the edge
    }
    for name, image in images.items():
        image = np.ascontiguousarray(image)
        height, width = image.shape[:2]
        whole = -(-max(height, width) // 8) * 8  # one tile holding the whole image: run whole
        untiled = run(image, runner, policy="in", tile_size=whole, margin=0)
        rows, cols = np.arange(height) // TILE, np.arange(width) // TILE
        per_pixel = (rows[:, None] % rows[-1] == 0) | (cols[None, :] % cols[-1] == 0)  # the first or last tiles
        for policy in ("in", "kin", "dn"):
            diff = np.abs(run(image, runner, policy=policy, tile_size=TILE) - untiled).mean(axis=2)
            results[f"{name} {policy}"] = {
                "border": round(float(diff[per_pixel].mean()), 2),
                "interior": round(float(diff[~per_pixel].mean()), 2),
            }
    for key, row in results.items():
        print(f"{key:24s} border tiles {row['border']:5.2f}   interior tiles {row['interior']:5.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
