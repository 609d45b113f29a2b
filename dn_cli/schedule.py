"""The order in which tiles are collected (moments measured) and applied (translated).

Pure bookkeeping over raster indices; no tensors. A schedule is a list of steps, each a
contiguous range of tiles of at most one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Step:
    kind: Literal["collect", "apply"]
    tiles: range


def last_neighbour(index: int, rows: int, cols: int) -> int:
    """Raster index of the last tile in the 3 × 3 neighbourhood of tile ``index``."""
    row, col = divmod(index, cols)
    return min(row + 1, rows - 1) * cols + min(col + 1, cols - 1)


def single_pass(rows: int, cols: int, batch: int) -> list[Step]:
    """Collect a batch ahead, then apply every full batch whose neighbourhoods are complete.

    At most ``cols + 2 * batch`` tiles are collected but not yet applied (DESIGN.md §6).
    """
    n = rows * cols
    steps: list[Step] = []
    collected = applied = 0
    while applied < n:
        if collected < n:
            end = min(collected + batch, n)
            steps.append(Step("collect", range(collected, end)))
            collected = end
        while applied < n:
            end = min(applied + batch, n)
            if collected < n and last_neighbour(end - 1, rows, cols) >= collected:
                break
            steps.append(Step("apply", range(applied, end)))
            applied = end
    return steps


def two_pass(rows: int, cols: int, batch: int) -> list[Step]:
    """Collect every tile, then apply every tile: the simple oracle."""
    n = rows * cols
    chunks = [range(i, min(i + batch, n)) for i in range(0, n, batch)]
    return [Step("collect", r) for r in chunks] + [Step("apply", r) for r in chunks]


def apply_only(rows: int, cols: int, batch: int) -> list[Step]:
    """Policies that need no neighbour moments (``in``, ``tin``) only apply."""
    n = rows * cols
    return [Step("apply", range(i, min(i + batch, n))) for i in range(0, n, batch)]


def rows_in_flight(steps: list[Step], cols: int) -> int:
    """How many tile rows of moments must be held at once: from the row above the first
    unapplied tile to the row of the last collected one."""
    collected = applied = 0
    most = 1
    for step in steps:
        if step.kind == "collect":
            collected = step.tiles.stop
            most = max(most, (collected - 1) // cols - applied // cols + 2)
        else:
            applied = step.tiles.stop
    return most


def by_tile_rows(rows: int, cols: int, factor: int, batch: int) -> list[Step]:
    """With moments on a finer grid (``geometry.MomentGrid``, ``factor`` windows per tile along
    each axis): before each tile row, collect the rows of windows its neighbourhoods need (up to
    window row factor·r + 1), then apply the row. Collect steps count windows in the window
    grid's raster order, apply steps tiles; three window rows are needed at once."""
    window_rows, window_cols = factor * (rows - 1) + 1, factor * (cols - 1) + 1
    steps: list[Step] = []
    collected = 0  # window rows
    for row in range(rows):
        needed = min(factor * row + 1, window_rows - 1) + 1
        start, stop = collected * window_cols, needed * window_cols
        steps += [Step("collect", range(i, min(i + batch, stop))) for i in range(start, stop, batch)]
        collected = max(collected, needed)
        start, stop = row * cols, (row + 1) * cols
        steps += [Step("apply", range(i, min(i + batch, stop))) for i in range(start, stop, batch)]
    return steps
