"""Make examples/sample_ihc.tif: a small pyramidal tiled TIFF of real tissue on glass.

Fragments of scikit-image's immunohistochemistry photograph (real colonic tissue, DAB +
haematoxylin) are cut out with irregular soft-edged outlines and laid on a glass-coloured
background, like sections on a slide, then written as a JPEG-compressed pyramidal TIFF
(256-pixel tiles) recording a nominal pixel size of 0.5 µm (the photograph's real pixel size
is not published). Seeded: the same file every time.

    python scripts/make_sample_slide.py --out examples/sample_ihc.tif
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyvips
import skimage.data
import skimage.filters

WIDTH, HEIGHT = 2560, 1792
GLASS = np.array([241.0, 240.0, 245.0])
MPP = 0.5
# (top-left x, y, rotation quarter-turns, mirrored) of each 512-pixel fragment, two per "section"
FRAGMENTS = [
    (180, 200, 0, False),
    (560, 420, 1, True),
    (1250, 260, 2, False),
    (1650, 700, 3, True),
    (420, 1080, 1, False),
    (1900, 1150, 0, True),
]


def outline(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    """A soft irregular blob: a smoothed random field thresholded inside an ellipse, as alpha 0..1."""
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    ellipse = 1 - (x / 0.40) ** 2 - (y / 0.36) ** 2
    noise = skimage.filters.gaussian(rng.normal(size=(size, size)), sigma=size / 12)
    field = ellipse + 0.3 * noise / noise.std()
    # Zero towards the fragment's square border, so no straight cut shows.
    edge = np.minimum(np.minimum(x + 0.5, 0.5 - x), np.minimum(y + 0.5, 0.5 - y)) * size
    field = np.where(edge < 24, -1, field)
    return np.clip(skimage.filters.gaussian((field > 0.15).astype(float), sigma=4), 0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples/sample_ihc.tif"))
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    tissue = skimage.data.immunohistochemistry().astype(float)
    slide = np.broadcast_to(GLASS, (HEIGHT, WIDTH, 3)) + rng.normal(0, 1.5, (HEIGHT, WIDTH, 1))
    for x, y, turns, mirrored in FRAGMENTS:
        piece = np.rot90(tissue, turns)
        piece = piece[:, ::-1] if mirrored else piece
        alpha = outline(rng)[..., None]
        region = slide[y : y + 512, x : x + 512]
        slide[y : y + 512, x : x + 512] = alpha * piece + (1 - alpha) * region
    pixels = np.clip(slide, 0, 255).round().astype(np.uint8)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    image = pyvips.Image.new_from_array(pixels, interpretation="srgb")
    # libvips takes pixels per millimetre; resunit cm makes readers report microns per pixel.
    image.tiffsave(
        str(args.out),
        tile=True,
        tile_width=256,
        tile_height=256,
        pyramid=True,
        compression="jpeg",
        Q=90,
        xres=1000 / MPP,
        yres=1000 / MPP,
        resunit="cm",
    )
    print(f"wrote {args.out} ({WIDTH}×{HEIGHT}, {MPP} µm/px, {args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
