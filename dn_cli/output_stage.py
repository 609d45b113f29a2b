"""The last stage of the pipeline on its own thread: translated batches to the sink, in raster order.

Waiting for a batch's pixels to reach the host, checking them, and copying them into the
sink's rows all happen here, so the loop that feeds the model goes on to the next batch at
once. A bounded queue keeps memory flat; an error here reaches the feeding loop at its next
hand-over, and stopping leaves no thread behind.

Skipped (glass) tiles are filled so that they meet the translation around them: each side of a
skipped tile takes the colour of the translated glass across it (the model's glass varies a few
grey levels from tile to tile, which one flat colour would show as steps), blended smoothly to
the image's glass colour on the other sides. A row is therefore written once the row below it
has arrived: where tiles are skipped, memory holds two more rows of tiles.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dn_cli.geometry import TileGrid
from dn_cli.handover import Handover
from dn_cli.images import Sink

EDGE = 16  # pixels: the strip of a translated neighbour whose glass a skipped tile's side takes
GLASS_TOLERANCE = 12  # grey levels from the image's glass colour: what counts as glass in a strip


def side_colour(strip: np.ndarray | None, background: np.ndarray) -> np.ndarray:
    """The mean colour of the glass in a translated neighbour's strip; the image's glass colour
    where there is no neighbour, or tissue fills its strip."""
    if strip is None:
        return background.astype(np.float64)
    pixels = strip.reshape(-1, 3).astype(np.float64)
    glass = np.abs(pixels - background).max(axis=1) <= GLASS_TOLERANCE
    return pixels[glass].mean(axis=0) if glass.mean() >= 0.25 else background.astype(np.float64)


def glass_field(height: int, width: int, sides: dict[str, np.ndarray]) -> np.ndarray:
    """``(height, width, 3)`` uint8: each side's colour along that side, blended inside with
    weights that fall off smoothly with the distance to each side (an eighth of the tile per
    e-fold), so the field meets its neighbours and has no step of its own."""
    fold = max(1.0, min(height, width) / 8)
    y = np.arange(height, dtype=np.float64)[:, None] + 0.5
    x = np.arange(width, dtype=np.float64)[None, :] + 0.5
    distances = {"top": y, "bottom": height - y, "left": x, "right": width - x}
    weights = {side: np.broadcast_to(np.exp(-d / fold), (height, width)) for side, d in distances.items()}
    total = sum(weights.values())
    field = sum(weights[side][..., None] * sides[side] for side in weights)
    return np.rint(field / total[..., None]).astype(np.uint8)


class OutputStage:
    """Writes hand-overs to ``sink``: every tile in raster order, the translated ones from their
    batch's result, skipped ones as glass that meets the translation around them.

    Args:
        background: the image's glass colour (``policies.glass_colour``).
        skipping: whether any tile is skipped (otherwise rows are written as they complete).
        progress: called with (tiles written, tiles total) as rows are written.
    """

    def __init__(
        self,
        sink: Sink,
        grid: TileGrid,
        background: np.ndarray,
        progress: Callable[[int, int], None] | None = None,
        depth: int = 2,
        skipping: bool = False,
    ) -> None:
        self._sink, self._grid, self._progress = sink, grid, progress
        self._background = np.asarray(background, np.uint8)
        self._lookahead = skipping
        self._handover: Handover = Handover(self._work, "dn-write", depth)

    def _work(self, take: Callable) -> None:
        grid = self._grid
        held: dict[int, np.ndarray | None] = {}  # by tile index: translated pixels, None where skipped
        written = arrived = 0  # tiles written; tiles handed over
        while (item := take()) is not None:
            tiles, translated, result = item
            pixels = {} if result is None else dict(zip(translated, result(), strict=True))
            for i in tiles:
                held[i] = pixels.get(i)
            arrived = tiles.stop
            while written < arrived and arrived >= self._needed(written):
                self._write(written, held)
                written += 1
            if self._progress is not None:
                self._progress(written, len(grid))
        if written < len(grid):  # the end: the last row has no row below to wait for
            while written < len(grid):
                self._write(written, held)
                written += 1
            if self._progress is not None:
                self._progress(written, len(grid))

    def _needed(self, index: int) -> int:
        """How many tiles must have arrived before tile ``index`` is written: itself, and where
        tiles are skipped the whole row below (its glass sets the fill of skipped tiles above it)."""
        if not self._lookahead:
            return index + 1
        return min((index // self._grid.cols + 2) * self._grid.cols, len(self._grid))

    def _write(self, index: int, held: dict[int, np.ndarray | None]) -> None:
        grid = self._grid
        row, col = grid.position(index)
        box = grid.output_box(row, col)
        tile = held[index]
        if tile is None:
            tile = self._glass(row, col, box.height, box.width, held)
        self._sink.write(box, tile[: box.height, : box.width])
        if col == grid.cols - 1:  # the row above is no one's neighbour now
            for above in range((row - 1) * grid.cols, row * grid.cols):
                held.pop(above, None)
        if not self._lookahead:
            held.pop(index, None)

    def _glass(self, row: int, col: int, height: int, width: int, held: dict) -> np.ndarray:
        grid = self._grid

        def neighbour(r: int, c: int) -> np.ndarray | None:
            inside = 0 <= r < grid.rows and 0 <= c < grid.cols
            return held.get(r * grid.cols + c) if inside else None

        above, below = neighbour(row - 1, col), neighbour(row + 1, col)
        left, right = neighbour(row, col - 1), neighbour(row, col + 1)
        strips = {
            "top": None if above is None else above[-EDGE:, :width],
            "bottom": None if below is None else below[:EDGE, :width],
            "left": None if left is None else left[:height, -EDGE:],
            "right": None if right is None else right[:height, :EDGE],
        }
        if all(strip is None for strip in strips.values()):  # glass all around: the image's glass colour
            return np.broadcast_to(self._background, (height, width, 3))
        sides = {side: side_colour(strip, self._background) for side, strip in strips.items()}
        return glass_field(height, width, sides)

    def put(self, tiles: range, translated: list[int], result: Callable[[], np.ndarray] | None) -> None:
        """Hand over one step: its tiles, those of them translated, and the function that waits for
        their pixels (``TileRunner.apply_async``); raises what went wrong with an earlier step."""
        self._handover.put((tiles, translated, result))

    def close(self) -> None:
        """Wait until everything handed over is written."""
        self._handover.close()

    def abort(self) -> None:
        """Stop without writing what is still queued."""
        self._handover.abort()
