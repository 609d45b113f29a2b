"""Seam score of each normalisation policy on the same real tissue image (docs/seam-score.md).

    python scripts/seam_scores.py --model dn_cli/models/weights/dab2aec_resnet_ngf16.pth --tile-size 256

The image is scikit-image's immunohistochemistry photograph (512 × 512 real tissue), optionally
enlarged (``--scale 2`` gives 1024 × 1024 and a 4 × 4 grid at tile 256). The untiled row is the
same converted model run on the whole image as one tile: the score of an output without seams.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import skimage.data
import skimage.transform
import torch

from dn_cli.images import ArrayImage, Canvas
from dn_cli.metrics import seam_score
from dn_cli.models import load_generator
from dn_cli.pipeline import TileRunner, translate
from dn_cli.policies import POLICIES


def tissue_image(scale: float) -> np.ndarray:
    image = skimage.data.immunohistochemistry()
    if scale != 1:
        image = skimage.transform.rescale(image, scale, channel_axis=2, order=3, preserve_range=True)
        image = np.clip(image, 0, 255).round().astype(np.uint8)
    return image


def translated(image: np.ndarray, runner: TileRunner, **options) -> np.ndarray:
    canvas = Canvas(image.shape[1], image.shape[0])
    translate(ArrayImage(image), canvas, runner, **options)
    return canvas.pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--save", type=Path, help="folder for the translated images (PNG)")
    args = parser.parse_args()

    image = tissue_image(args.scale)
    runner = TileRunner(load_generator(args.model), torch.device("cpu"))
    height, width = image.shape[:2]
    untiled_size = -(-max(height, width) // 4) * 4
    outputs = {"input": image, "untiled": translated(image, runner, policy="in", tile_size=untiled_size, margin=0)}
    for policy in POLICIES:
        outputs[policy] = translated(image, runner, policy=policy, tile_size=args.tile_size)
    scores = {name: round(seam_score(pixels, args.tile_size), 4) for name, pixels in outputs.items()}
    print(f"image {width}×{height}, tile {args.tile_size}, model {args.model.name}")
    for name, score in scores.items():
        print(f"  {name:8s} {score:.4f}")
    print(json.dumps(scores))
    if args.save:
        import pyvips

        args.save.mkdir(parents=True, exist_ok=True)
        for name, pixels in outputs.items():
            pyvips.Image.new_from_array(pixels, interpretation="srgb").write_to_file(str(args.save / f"{name}.png"))


if __name__ == "__main__":
    main()
