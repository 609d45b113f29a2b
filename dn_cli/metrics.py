"""Seam score: how much more the image changes across tile borders than right beside them.

A *step* is the absolute difference between two neighbouring pixels (per channel). For every
tile border and every pixel along it, the step across the border is compared with the mean of
the ``k`` steps on each side of it, on the same line of pixels. The score is the sum of border
steps over the sum of those local baselines: 1.0 means a border changes the image no more than
the texture next to it (no visible grid); 1.5 means borders jump 50 % more. Comparing with the
steps right beside each border, not with the whole image, keeps the score from following the
content. See docs/seam-score.md.
"""

from __future__ import annotations

import numpy as np


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
