"""An image held in memory translated through the same pipeline as a slide, into memory."""

from __future__ import annotations

import numpy as np

from dn_cli.app.events import Events
from dn_cli.app.settings import Settings
from dn_cli.errors import InputError
from dn_cli.geometry import TileGrid, fit_grid
from dn_cli.images import ArrayImage, Canvas, ImageSource
from dn_cli.pipeline import TileRunner
from dn_cli.pipeline import translate as run_translation
from dn_cli.tissue import select_tiles


def find_tissue(
    source: ImageSource, grid: TileGrid, min_tissue: float, warn, name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the tiles to translate, the tissue mask, the thumbnail it was found on); every tile where
    no tissue is found at all (too faint to see: erasing the whole image would be worse)."""
    active, mask, thumbnail = select_tiles(source, grid, min_tissue=min_tissue)
    if not active.any():
        warn(f"{name}: no tissue found; translating every tile")
        active[:] = True
    return active, mask, thumbnail


def rgb_pixels(image) -> np.ndarray:
    """``image`` as ``(height, width, 3)`` uint8, or one line saying what it is instead."""
    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8 or 0 in pixels.shape:
        raise InputError(
            f"expected an RGB image as a (height, width, 3) uint8 array, got {pixels.shape} {pixels.dtype}"
        )
    return pixels


def translate_pixels(
    image, runner: TileRunner, settings: Settings, events: Events, mpp: float | None = None
) -> np.ndarray:
    """The translation of ``image`` (RGB uint8), the same shape; ``settings.tissue`` (None: on)
    skips glass tiles as for a slide."""
    source = ArrayImage(rgb_pixels(image), mpp)
    s = settings
    grid = fit_grid(source.width, source.height, s.tile_size, s.margin, runner.stride, runner.min_size)
    active = None
    if s.tissue is not False:
        active = find_tissue(source, grid, s.min_tissue, events.warning, "the image")[0]
    canvas = Canvas(source.width, source.height)
    options = {"policy": s.policy, "moment_stride": s.moment_stride_px(grid.tile_size), "batch_size": s.batch_size}
    run_translation(source, canvas, runner, grid=grid, active=active, **options)
    return canvas.pixels
