"""Side-by-side previews (input | output) for checking a batch at a glance."""

from __future__ import annotations

import numpy as np

OUTLINE = np.array([0, 200, 0], np.uint8)  # the tissue mask's outline, in green
GAP = 8


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` that touch a pixel outside it."""
    padded = np.pad(mask, 1, mode="edge")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def side_by_side(before: np.ndarray, after: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``before`` and ``after`` (uint8 RGB of the same size, give or take a rounded pixel) on
    white, with the tissue outline (``mask`` at any resolution) drawn on ``before``."""
    height = min(before.shape[0], after.shape[0])
    before, after = before[:height], after[:height]
    if mask is not None:
        rows = np.arange(height) * mask.shape[0] // height
        cols = np.arange(before.shape[1]) * mask.shape[1] // before.shape[1]
        edge = outline(mask[rows][:, cols])
        before = before.copy()
        before[edge] = OUTLINE
    canvas = np.full((height, before.shape[1] + GAP + after.shape[1], 3), 255, np.uint8)
    canvas[:, : before.shape[1]] = before
    canvas[:, before.shape[1] + GAP :] = after
    return canvas
