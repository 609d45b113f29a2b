"""How good an output is: its seams (the seam score), and how far it is from a reference by ring
of the tile grid (fidelity, docs/quality.md).

Seam score: how much more the image changes across tile borders than right beside them.

A *step* is the absolute difference between two neighbouring pixels (per channel). For every
tile border and every pixel along it, the step across the border is compared with the mean of
the ``k`` steps on each side of it, on the same line of pixels. The score is the sum of border
steps over the sum of those local baselines: 1.0 means a border changes the image no more than
the texture next to it (no visible grid); 1.5 means borders jump 50 % more. Comparing with the
steps right beside each border, not with the whole image, keeps the score from following the
content. See docs/seam-score.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dn_cli.geometry import Box
from dn_cli.images import ArrayImage, read_padded

if TYPE_CHECKING:
    from dn_cli.pipeline import TileRunner


def seam_score(image: np.ndarray, tile_size: int, k: int = 2) -> float:
    """Border steps over the local baseline of the ``k`` steps either side, summed over all borders."""
    pixels = image.astype(np.float64)
    border_sum = baseline_sum = 0.0
    for axis in (0, 1):
        steps = np.moveaxis(np.abs(np.diff(pixels, axis=axis)), axis, 0)  # step i: pixel i to i + 1
        n = steps.shape[0]
        for border in range(tile_size - 1, n, tile_size):
            beside = [border + d for d in (*range(-k, 0), *range(1, k + 1)) if 0 <= border + d < n]
            border_sum += steps[border].sum()
            baseline_sum += steps[beside].mean(axis=0).sum()
    if baseline_sum == 0:
        raise ValueError(f"a {image.shape[1]}×{image.shape[0]} image has no {tile_size}-pixel tile borders")
    return border_sum / baseline_sum


# Fidelity: how far an output is from a reference, by where pixels lie in their tile ------------

RINGS = ("all", "border", "interior", "centre", "seam")


def ring_masks(height: int, width: int, tile_size: int) -> dict[str, np.ndarray]:
    """Where each pixel lies on the tile grid (docs/quality.md, "Fidelity"): ``border``, the tiles
    along the image's edge; ``interior``, the others; within those, ``centre``, the middle quarter
    of a tile's side (at least 3T/8 from every tile border), and ``seam``, the outer band (less
    than T/8 from a tile border: the quarter of a side nearest the seams)."""
    t = tile_size
    y, x = np.mgrid[0:height, 0:width]
    rows, cols = -(-height // t), -(-width // t)
    border = (y // t == 0) | (y // t == rows - 1) | (x // t == 0) | (x // t == cols - 1)
    u, v = x % t + 0.5, y % t + 0.5
    distance = np.minimum.reduce([u, t - u, v, t - v])  # to the nearest tile border
    interior = ~border
    return {
        "all": np.ones((height, width), bool),
        "border": border,
        "interior": interior,
        "centre": interior & (distance >= 3 * t / 8),
        "seam": interior & (distance < t / 8),
    }


def ring_errors(output: np.ndarray, reference: np.ndarray, rings: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean absolute difference (grey levels, over channels) from ``reference`` in each ring."""
    difference = np.abs(output.astype(np.float64) - reference.astype(np.float64)).mean(axis=2)
    return {name: float(difference[mask].mean()) if mask.any() else float("nan") for name, mask in rings.items()}


def local_reference(image: np.ndarray, runner: TileRunner, window: int, block: int = 32, batch: int = 16) -> np.ndarray:
    """Every pixel translated with the moments of its own neighbourhood: the model run (plain
    InstanceNorm) on a ``window``-pixel square centred on each ``block``-pixel block, the block
    kept. The image's edges are mirrored as the pipeline mirrors them. "Every pixel has its
    moments", taken literally: what DN's interpolated moments stand in for."""
    height, width = image.shape[:2]
    source = ArrayImage(np.ascontiguousarray(image))
    out = np.zeros_like(image)
    offset = (window - block) // 2
    blocks = [(y, x) for y in range(0, height, block) for x in range(0, width, block)]
    for start in range(0, len(blocks), batch):
        part = blocks[start : start + batch]
        windows = np.stack([read_padded(source, Box(x - offset, y - offset, window, window)) for y, x in part])
        pixels = runner.apply(windows, None, offset, block)
        for (y, x), translated in zip(part, pixels, strict=True):
            h, w = min(block, height - y), min(block, width - x)
            out[y : y + h, x : x + w] = translated[:h, :w]
    return out
