"""What the pipeline needs from an image source, and padded reads with real context."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from dn_cli.geometry import Box, reflect_indices


class ImageSource(Protocol):
    """An RGB image readable by region, in level pixels."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    def read(self, box: Box) -> np.ndarray:
        """``(height, width, 3)`` uint8 pixels of a box that lies inside the image."""
        ...

    def thumbnail(self, max_side: int) -> np.ndarray:
        """The whole image shrunk so its longer side is at most ``max_side``, as uint8 RGB."""
        ...


def read_padded(source: ImageSource, box: Box) -> np.ndarray:
    """Read ``box`` from ``source``; only pixels outside the image are filled by reflection.

    Reads the smallest in-image window that holds every reflected index, then gathers from it.
    """
    ys = reflect_indices(box.y, box.height, source.height)
    xs = reflect_indices(box.x, box.width, source.width)
    y0, x0 = int(ys.min()), int(xs.min())
    window = source.read(Box(x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1))
    inside = box.x >= 0 and box.y >= 0 and box.x + box.width <= source.width and box.y + box.height <= source.height
    if inside:
        return window
    return window[np.ix_(ys - y0, xs - x0)]
