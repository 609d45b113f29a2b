"""An image that fits in one tile: dn's output against the model's own forward on that image.

    python scripts/small_image_study.py

scikit-image's IHC photograph cropped to 256 × 384, the bundled model. "Mirrored tile" is what
dn did before (the image mirrored out to a whole 512 tile plus its 16-pixel margin, as
``read_padded`` fills past the edge, then cropped back); "run whole" is ``dn translate`` now.
Absolute differences in grey levels, over all pixels and channels.
"""

from __future__ import annotations

import json

import numpy as np
import skimage.data
import torch

from dn_cli.geometry import Box
from dn_cli.images import ArrayImage, Canvas, read_padded
from dn_cli.models import DEMO_MODEL, load_generator
from dn_cli.pipeline import TileRunner, translate


def stats(out: np.ndarray, own: np.ndarray) -> dict:
    diff = np.abs(out.astype(int) - own.astype(int))
    return {"mean": round(float(diff.mean()), 2), "p99": float(np.percentile(diff, 99)), "max": int(diff.max())}


def main() -> None:
    image = np.ascontiguousarray(skimage.data.immunohistochemistry()[:256, :384])
    generator = load_generator(DEMO_MODEL)
    runner = TileRunner(generator, torch.device("cpu"))
    with torch.no_grad():
        y = generator.module(torch.from_numpy(image)[None].permute(0, 3, 1, 2).float() / 127.5 - 1)
    own = ((y + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    mirrored_tile = read_padded(ArrayImage(image), Box(-16, -16, 544, 544))
    before = runner.apply(mirrored_tile[None], None, 16, 512)[0][:256, :384]
    results = {"mirrored tile (before)": stats(before, own)}
    for policy in ("in", "dn", "kin", "tin"):
        canvas = Canvas(384, 256)
        translate(ArrayImage(image), canvas, runner, policy=policy, tile_size=512)
        results[f"run whole, --norm {policy}"] = stats(canvas.pixels, own)
    for name, row in results.items():
        print(f"{name:28s} mean {row['mean']:5.2f}  p99 {row['p99']:5.1f}  max {row['max']:3d}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
