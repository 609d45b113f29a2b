"""Where tile moments wait between collection and use.

Moments of all norm layers of one tile are packed into one ``(2, C_total)`` vector (mean, inverse
std), so storing and gathering a batch is one indexing operation whatever the model depth.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dn_cli.dense_norm import Neighbourhood


class MomentLayout:
    """Packs and unpacks per-layer moments; ``channels[i]`` is layer i's channel count."""

    def __init__(self, channels: list[int]) -> None:
        self.channels = channels
        self.total = sum(channels)

    def pack(self, moments: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Every layer's mean and inverse std, each ``(B, C_i)``, in layer order
        (``mean_0, inv_std_0, mean_1, ...``) → ``(B, 2, C_total)``."""
        return torch.stack([torch.cat(moments[0::2], dim=1), torch.cat(moments[1::2], dim=1)], dim=1)

    def neighbourhood(self, packed: torch.Tensor, valid: torch.Tensor, complete: bool) -> Neighbourhood:
        """``(B, 3, 3, 2, C_total)`` moments and their ``(B, 3, 3)`` mask → per-layer views."""
        return Neighbourhood(list(torch.split(packed, self.channels, dim=-1)), valid, complete)


class MomentRing:
    """Moments of the last few rows of moment windows, in a ring of ``slots`` rows on the compute
    device (``rows`` × ``cols`` windows: the tiles, or a ``geometry.MomentGrid``).

    Memory is O(grid width). A row's slot is reused only once no tile still to be applied can
    need it; the ring checks that on the host, without synchronising the device.

    Args:
        factor: windows per tile along each axis (``MomentGrid.factor``): tile (r, c)'s
            neighbourhood is windows (factor·r ± 1, factor·c ± 1).
        tile_cols: the tile grid's width, which raster tile indices count in (default: ``cols``).
    """

    def __init__(
        self,
        layout: MomentLayout,
        rows: int,
        cols: int,
        slots: int,
        device: torch.device,
        factor: int = 1,
        tile_cols: int | None = None,
    ) -> None:
        self.layout, self.rows, self.cols, self.slots = layout, rows, cols, slots
        self.factor, self.tile_cols = factor, tile_cols or cols
        # One spare slot row and two spare columns stay invalid: neighbours outside the grid.
        self._moments = torch.zeros(slots + 1, cols + 2, 2, layout.total, device=device)
        self._written = np.zeros((slots + 1, cols + 2), bool)  # on the host: no device sync
        self._slot_row: list[int | None] = [None] * slots

    def write(self, tiles: Sequence[int], packed: torch.Tensor, oldest_needed_row: int) -> None:
        """Store ``packed`` ``(B, 2, C_total)`` for raster ``tiles``."""
        rows, cols = np.divmod(np.asarray(tiles), self.cols)
        for row in np.unique(rows):
            slot = row % self.slots
            held = self._slot_row[slot]
            if held != row:
                if held is not None and held >= oldest_needed_row:
                    raise RuntimeError(f"moment ring too small: row {row} would evict needed row {held}")
                self._written[slot] = False
                self._slot_row[slot] = int(row)
        slot_idx = torch.as_tensor(rows % self.slots, device=packed.device)
        col_idx = torch.as_tensor(cols + 1, device=packed.device)
        self._moments[slot_idx, col_idx] = packed
        self._written[rows % self.slots, cols + 1] = True

    def gather(self, tiles: Sequence[int]) -> Neighbourhood:
        """The 3 × 3 neighbourhoods of raster ``tiles``."""
        rows, cols = (self.factor * i for i in np.divmod(np.asarray(tiles), self.tile_cols))
        around = np.arange(-1, 2)
        if self.factor == 1:  # neighbours outside the grid: invalid, their weight renormalised away
            slot_idx = np.array([[self._slot_of(r) for r in row + around] for row in rows])
            col_idx = cols[:, None] + 1 + around
        else:  # windows beyond the grid's edge: the edge window's moments, as the margin takes them
            slot_idx = np.array([[self._slot_of(r) for r in np.clip(row + around, 0, self.rows - 1)] for row in rows])
            col_idx = np.clip(cols[:, None] + around, 0, self.cols - 1) + 1
        device = self._moments.device
        s = torch.as_tensor(slot_idx, device=device)[:, :, None]
        c = torch.as_tensor(col_idx, device=device)[:, None, :]
        written = self._written[slot_idx[:, :, None], col_idx[:, None, :]]
        valid = torch.as_tensor(written.astype(np.float32)).to(device, non_blocking=True)
        return self.layout.neighbourhood(self._moments[s, c], valid, bool(written.all()))

    def _slot_of(self, row: int) -> int:
        if 0 <= row < self.rows and self._slot_row[row % self.slots] == row:
            return row % self.slots
        return self.slots


class ThumbnailMoments:
    """One set of moments for every tile (TIN): the thumbnail's, as the only valid neighbour."""

    def __init__(self, layout: MomentLayout, packed: torch.Tensor) -> None:
        self.layout = layout
        self._packed = packed  # (1, 2, C_total)

    def gather(self, tiles: Sequence[int]) -> Neighbourhood:
        n = len(tiles)
        packed = self._packed.new_zeros(n, 3, 3, 2, self.layout.total)
        packed[:, 1, 1] = self._packed
        valid = self._packed.new_zeros(n, 3, 3)
        valid[:, 1, 1] = 1
        return self.layout.neighbourhood(packed, valid, complete=False)
