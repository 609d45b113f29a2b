"""Halos: how far DN strays from per-tile IN next to flat tiles (glass), and what masking helps.

    python scripts/halo_study.py

Real tissue (scikit-image's IHC photograph, 512²) is laid on noisy glass filling a 1024² image,
so a 4 × 4 grid of 256-pixel tiles has 4 tissue tiles in the middle and 12 flat glass tiles
around them. Interpolating the inverse std lets a flat tile (tiny variance, huge inverse std)
dominate the border of its textured neighbour. Measured, inside the tissue tiles: the mean and
maximum |DN − IN| (grey levels) in a 32-pixel band along the glass borders, against the same in
the tissue's interior (away from any glass): for DN as the paper defines it (every tile shares
its moments), for DN as dn runs it (near-constant tiles carry the whole image's moments instead
of their own, see ``policies.is_flat``), and for DN with the glass tiles skipped (what tissue
detection does). And on the glass, away from the tissue and the image border: the mean
|DN − untiled| (the same model run on the whole image at once: what glass looks like without
tiles), the largest channel difference of the glass's median colour from the untiled glass's,
and the standard deviation of the output shade (0 = one uniform shade).
"""

from __future__ import annotations

import numpy as np
import skimage.data
import torch

from dn_cli.images import ArrayImage, Canvas
from dn_cli.metrics import seam_score
from dn_cli.models import DEMO_MODEL, load_generator
from dn_cli.pipeline import TileRunner, translate
from dn_cli.policies import FLAT_STD

TILE, BAND = 256, 32


def tissue_on_glass() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(241, 1.5, (1024, 1024, 1)).repeat(3, axis=2), 0, 255).astype(np.uint8)
    image[256:768, 256:768] = skimage.data.immunohistochemistry()
    return image


def run(image: np.ndarray, runner: TileRunner, **options) -> np.ndarray:
    canvas = Canvas(image.shape[1], image.shape[0])
    translate(ArrayImage(image), canvas, runner, **{"tile_size": TILE, **options})
    return canvas.pixels.astype(np.int16)


def main() -> None:
    image = tissue_on_glass()
    runner = TileRunner(load_generator(DEMO_MODEL), torch.device("cpu"))
    reference = run(image, runner, policy="in")
    active = np.zeros((4, 4), bool)
    active[1:3, 1:3] = True
    tissue = np.zeros((1024, 1024), bool)
    tissue[256:768, 256:768] = True
    band = tissue.copy()
    band[256 + BAND : 768 - BAND, 256 + BAND : 768 - BAND] = False
    interior = tissue & ~band
    glass = np.zeros((1024, 1024), bool)
    glass[24:-24, 24:-24] = True
    glass[256 - 48 : 768 + 48, 256 - 48 : 768 + 48] = False
    untiled = run(image, runner, policy="in", tile_size=1024, margin=0)
    print(
        f"{'variant':34s} {'band mean':>9s} {'band max':>8s} {'interior mean':>13s} {'tissue seam':>11s} "
        f"{'glass vs untiled':>16s} {'glass colour':>12s} {'glass shade std':>15s}"
    )
    variants = (
        ("dn, every tile shares its own", 0.0, {}),
        ("dn, flat tiles carry the image's", FLAT_STD, {}),
        ("dn, glass tiles skipped", FLAT_STD, {"active": active}),
    )
    for name, threshold, options in variants:
        out = run(image, runner, policy="dn", flat_std=threshold, **options)
        deviation = np.abs(out - reference).max(axis=2)
        seam = seam_score(out[256:768, 256:768].astype(np.uint8), TILE)
        from_untiled, shade_std = np.abs(out - untiled).max(axis=2)[glass].mean(), out.mean(axis=2)[glass].std()
        colour = np.abs(np.median(out[glass], axis=0) - np.median(untiled[glass], axis=0)).max()
        print(
            f"{name:34s} {deviation[band].mean():9.2f} {deviation[band].max():8d} "
            f"{deviation[interior].mean():13.2f} {seam:11.4f} {from_untiled:16.2f} {colour:12.0f} {shade_std:15.2f}"
        )


if __name__ == "__main__":
    main()
