"""Seam score: how much more the image changes across tile borders than elsewhere.

For every pair of adjacent pixel columns (and rows) take the mean absolute difference over all
rows and channels. The score is the mean of those differences at tile borders divided by their
mean everywhere else: 1.0 means a border is as smooth as any other place (no visible grid), and
a score of 1.5 means borders jump 50 % more than the image's ordinary texture. See docs/seam-score.md.
"""

from __future__ import annotations

import numpy as np


def _border_and_interior_steps(image: np.ndarray, tile_size: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    steps = np.abs(np.diff(image.astype(np.float64), axis=axis))
    other = tuple(a for a in range(image.ndim) if a != axis)
    per_step = steps.mean(axis=other)  # step k is between pixel k and k + 1
    at_border = (np.arange(per_step.size) + 1) % tile_size == 0
    return per_step[at_border], per_step[~at_border]


def seam_score(image: np.ndarray, tile_size: int) -> float:
    """Mean step across tile borders over the mean step between other neighbouring pixels."""
    border, interior = zip(*(_border_and_interior_steps(image, tile_size, axis) for axis in (0, 1)), strict=True)
    border_steps, interior_steps = np.concatenate(border), np.concatenate(interior)
    if border_steps.size == 0:
        raise ValueError(f"a {image.shape[1]}×{image.shape[0]} image has no {tile_size}-pixel tile borders")
    return float(border_steps.mean() / interior_steps.mean())
