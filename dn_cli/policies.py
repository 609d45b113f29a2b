"""The normalisation policies and their rules: which moments each uses, which tiles carry the
whole image's moments instead of their own, and what skipped tiles are filled with.

``pipeline.translate`` runs the loop; what a policy decides lives here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from dn_cli.dense_norm import Weighting
from dn_cli.geometry import TileGrid
from dn_cli.images import ImageSource, read_padded

Policy = Literal["dn", "in", "kin", "tin"]
POLICIES: tuple[Policy, ...] = ("dn", "in", "kin", "tin")


def collects(policy: Policy) -> bool:
    """Whether every tile's moments are collected ahead of applying (DN's dense field, KIN's 3 × 3
    mean); ``in`` uses each tile's own, ``tin`` one thumbnail's."""
    return policy in ("dn", "kin")


def uses_thumbnail(policy: Policy) -> bool:
    return policy == "tin"


def weighting(policy: Policy) -> Weighting:
    """How neighbours' moments are blended: bilinear (DN) or flat (KIN)."""
    return "flat" if policy == "kin" else "bilinear"


FLAT_STD = 3.0  # grey levels: scanner noise on glass; tissue and textured scenes are far above


def is_flat(padded_tile: np.ndarray, margin: int, tile_size: int, threshold: float = FLAT_STD) -> bool:
    """Whether a tile's own pixels are near-constant (glass, sky, a flat background).

    Such a tile's variance is noise, its inverse std huge: blended into its neighbours' it would
    cast halos on them. Its moments are replaced by the whole image's (a thumbnail's), which
    blend like any tile's: the field stays one continuous function over the image.
    """
    own = padded_tile[margin : margin + tile_size : 4, margin : margin + tile_size : 4]  # a 1/16 sample suffices
    return float(own.std(axis=(0, 1)).max()) < threshold


def glass_colour(
    source: ImageSource, grid: TileGrid, active: np.ndarray, render: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """The model's rendering of the skipped tiles' glass, to fill them with.

    One skipped tile (the middle one in raster order: away from a slide's corners and label) is
    translated by ``render`` with the whole image's moments — as the model run on the whole image
    normalises glass, and as DN treats near-constant tiles (:func:`is_flat`) — and the median of
    its output is the fill. Neither its own moments (under InstanceNorm a tile of pure glass is
    amplified noise) nor a translated neighbour's pale pixels (tissue, normalised with tissue's
    moments) render glass as the untiled model does.
    """
    skipped = np.flatnonzero(~active)
    index = int(skipped[(len(skipped) - 1) // 2])
    tile = read_padded(source, grid.padded_box(*grid.position(index)))
    return np.median(render(tile).reshape(-1, 3), axis=0).astype(np.uint8)
