"""Pictures of in, kin, tin and dn on the same real tissue, with their seam scores.

    python scripts/compare_policies.py --out docs/figures

Translates scikit-image's IHC photograph, enlarged ×2 to 1024² (a 4 × 4 grid of 256-pixel
tiles), with the bundled generator under each policy, and writes:
- ``policies_full.jpg``: each whole output, labelled with its seam score;
- ``policies_corner.jpg``: the input and every output around one tile corner, enlarged ×2
  (nearest neighbour), so seams are visible pixel for pixel.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyvips
import torch

sys.path.insert(0, str(Path(__file__).parent))
from seam_scores import tissue_image, translated  # noqa: E402

from dn_cli.metrics import seam_score  # noqa: E402
from dn_cli.models import DEMO_MODEL, load_generator  # noqa: E402
from dn_cli.pipeline import TileRunner  # noqa: E402
from dn_cli.policies import POLICIES  # noqa: E402

TILE = 256
CORNER = (512, 512)  # a tile corner (x, y) of the 4 × 4 grid
HALF = 80  # crop half-size around it


def labelled(pixels: np.ndarray, label: str) -> pyvips.Image:
    image = pyvips.Image.new_from_array(np.ascontiguousarray(pixels), interpretation="srgb")
    ink = pyvips.Image.text(label, dpi=110)  # white text on black
    caption = (255 - ink).cast("uchar").embed(4, 4, image.width, ink.height + 8, extend="white")
    caption = caption.bandjoin([caption, caption]).copy(interpretation="srgb")
    return caption.join(image, "vertical", background=[255, 255, 255])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = parser.parse_args()

    image = tissue_image(2.0)
    runner = TileRunner(load_generator(DEMO_MODEL), torch.device("cpu"))
    outputs = {"untiled": translated(image, runner, policy="in", tile_size=image.shape[0], margin=0)}
    outputs |= {p: translated(image, runner, policy=p, tile_size=TILE) for p in POLICIES}
    scores = {name: seam_score(pixels, TILE) for name, pixels in outputs.items()}

    args.out.mkdir(parents=True, exist_ok=True)
    full = [labelled(outputs[p][::2, ::2], f"{p}: seam score {scores[p]:.3f}") for p in ("in", "kin", "tin", "dn")]
    # Half size keeps the file small; tile borders are every 128 pixels there.
    pyvips.Image.arrayjoin(full, across=2, shim=8, background=[255, 255, 255]).write_to_file(
        str(args.out / "policies_full.jpg"), Q=90
    )

    x, y = CORNER
    crops = {"input": image, **outputs}
    corner = [
        labelled(
            np.repeat(np.repeat(pixels[y - HALF : y + HALF, x - HALF : x + HALF], 2, 0), 2, 1),
            name if name not in scores else f"{name}: {scores[name]:.3f}",
        )
        for name, pixels in crops.items()
    ]
    pyvips.Image.arrayjoin(corner, across=3, shim=8, background=[255, 255, 255]).write_to_file(
        str(args.out / "policies_corner.jpg"), Q=95
    )
    for name, score in scores.items():
        print(f"  {name:8s} seam score {score:.4f}")


if __name__ == "__main__":
    main()
