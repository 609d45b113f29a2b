"""Tissue detection on a thumbnail: which tiles hold tissue and which are empty glass.

Saturation separates stained tissue from glass whatever the stain's hue. The saturation is
smoothed (3 × 3 mean), thresholded at Otsu's value kept within [0.03, 0.05]: where tissue is a
minority, Otsu alone splits strongly from weakly stained tissue (DAB from haematoxylin-only
stroma), and on a slide of nearly all glass it would split the glass's own noise. The mask is
then cleaned by a morphological closing (fills holes such as lumina) and opening (drops dust),
sized in µm² and converted to thumbnail pixels, and grown by the same radius, so the pale edges
of sections stay inside.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from dn_cli.geometry import TileGrid
from dn_cli.images import ImageSource

THUMBNAIL_MPP = 8.0  # µm per thumbnail pixel: a 100,000-pixel slide at 0.25 µm/px gives 3,125 pixels
MAX_THUMBNAIL = 4096  # pixels: bounds memory where a file's pixel size is a default like 72 dpi
THRESHOLD_RANGE = (0.03, 0.05)  # where Otsu's saturation threshold is kept (see above)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold in [0, 1] that maximises the between-class variance of ``values``."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    total = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * (1 - w0))
    return float(centres[np.argmax(np.nan_to_num(between, nan=-1.0))])  # NaN where a class is empty


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of uint8 RGB."""
    rgb = rgb.astype(np.float32)
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    return np.where(high > 0, (high - low) / np.maximum(high, 1), 0)


def _morph(mask: torch.Tensor, radius: int, grow: bool) -> torch.Tensor:
    if radius < 1:
        return mask
    size = 2 * radius + 1
    if grow:
        return F.max_pool2d(mask, size, stride=1, padding=radius)
    return -F.max_pool2d(-mask, size, stride=1, padding=radius)


def tissue_mask(thumbnail: np.ndarray, mpp: float, min_area_um2: float = 5000.0) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail whose pixels are ``mpp`` µm wide."""
    s = torch.from_numpy(saturation(thumbnail))[None, None]
    s = F.avg_pool2d(s, 3, stride=1, padding=1, count_include_pad=False)
    threshold = float(np.clip(otsu_threshold(s.numpy().ravel()), *THRESHOLD_RANGE))
    m = (s > threshold).float()
    # Holes and specks smaller than min_area_um2: a square of side 2r + 1, r the radius of a disc
    # of that area in pixels (max-pooling makes squares; close enough at this size).
    radius = round(math.sqrt(min_area_um2 / math.pi) / mpp)
    m = _morph(_morph(m, radius, grow=True), radius, grow=False)  # closing
    m = _morph(_morph(m, radius, grow=False), radius, grow=True)  # opening
    m = _morph(m, radius, grow=True)  # a safety margin: pale tissue edges fall below the threshold
    return m[0, 0].numpy() > 0.5


def tile_fractions(mask: np.ndarray, grid: TileGrid) -> np.ndarray:
    """``(rows, cols)`` fraction of each tile's own pixels that the mask calls tissue."""
    scale_y, scale_x = mask.shape[0] / grid.height, mask.shape[1] / grid.width
    fractions = np.zeros((grid.rows, grid.cols))
    for row in range(grid.rows):
        for col in range(grid.cols):
            box = grid.output_box(row, col)
            y0, x0 = int(box.y * scale_y), int(box.x * scale_x)
            y1 = max(y0 + 1, math.ceil((box.y + box.height) * scale_y))
            x1 = max(x0 + 1, math.ceil((box.x + box.width) * scale_x))
            fractions[row, col] = mask[y0:y1, x0:x1].mean()
    return fractions


def select_tiles(
    source: ImageSource, grid: TileGrid, *, min_tissue: float, min_area_um2: float = 5000.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(active tiles ``(rows, cols)``, tissue mask, thumbnail) of an image source.

    A tile is active when more than ``min_tissue`` of its pixels are tissue (0: any tissue at all,
    so no tissue is ever replaced by glass). Without a known pixel
    size the thumbnail is 1024 pixels on its longer side and the cleanup 2 pixels wide.
    """
    longest = max(grid.width, grid.height)
    mpp = source.mpp
    side = min(MAX_THUMBNAIL, max(64, round(longest * mpp / THUMBNAIL_MPP))) if mpp else 1024
    thumbnail = source.thumbnail(side)
    thumb_mpp = mpp * longest / max(thumbnail.shape[:2]) if mpp else None
    mask = tissue_mask(thumbnail, thumb_mpp, min_area_um2) if thumb_mpp else tissue_mask(thumbnail, 1.0, 4 * math.pi)
    return tile_fractions(mask, grid) > min_tissue, mask, thumbnail


def overlay(thumbnail: np.ndarray, mask: np.ndarray, active: np.ndarray, grid: TileGrid) -> np.ndarray:
    """A QC picture: glass dimmed, skipped tiles darker still, tissue as it is."""
    h, w = mask.shape
    rows = np.minimum((np.arange(h) + 0.5) * grid.height / h // grid.tile_size, grid.rows - 1).astype(int)
    cols = np.minimum((np.arange(w) + 0.5) * grid.width / w // grid.tile_size, grid.cols - 1).astype(int)
    shade = np.where(mask, 1.0, 0.6) * np.where(active[rows][:, cols], 1.0, 0.6)
    return (thumbnail[:h, :w] * shade[..., None]).astype(np.uint8)
