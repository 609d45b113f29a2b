"""Padded tile reads on a thread pool, running ahead of the model, each batch staged off the main thread.

OpenSlide and numpy release the GIL while reading and copying, so reader threads (one per
core) keep the next batches ready while the current one is on the model; a staging thread turns
each batch's tiles into what the model takes (stacked, pinned), so the loop that feeds the
model only waits when the reads are the slower stage.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from dn_cli.geometry import TileGrid
from dn_cli.images import ImageSource, read_padded


def reader_threads() -> int:
    """One per core (reads decode JPEG tiles, which scales), at least 4 (they also wait on disk)."""
    return max(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 4)


class TileReader:
    """Reads the given batches of tiles, in order, ``ahead`` batches before they are asked for.

    Args:
        stage: makes a batch's tiles (a list of padded ``(h, w, 3)`` arrays) into what the caller
            takes, on the staging thread (default: the list itself).
    """

    def __init__(
        self,
        source: ImageSource,
        grid: TileGrid,
        batches: Iterable[range | list[int]],
        *,
        workers: int | None = None,
        ahead: int = 2,
        stage: Callable[[list[np.ndarray]], object] = list,
    ) -> None:
        self._source, self._grid, self._ahead, self._stage = source, grid, ahead, stage
        self._batches = iter(batches)
        self._pool = ThreadPoolExecutor(max_workers=workers or reader_threads(), thread_name_prefix="dn-read")
        self._stager = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dn-stage")
        self._queued: deque[tuple[range | list[int], Future]] = deque()
        try:
            self._fill()
        except BaseException:
            self.__exit__()
            raise

    def _read(self, index: int) -> np.ndarray:
        return read_padded(self._source, self._grid.padded_box(*self._grid.position(index)))

    def _fill(self) -> None:
        while len(self._queued) < self._ahead and (tiles := next(self._batches, None)) is not None:
            reads = [self._pool.submit(self._read, i) for i in tiles]
            self._queued.append((tiles, self._stager.submit(self._staged, reads)))

    def _staged(self, reads: list[Future]):
        return self._stage([f.result() for f in reads])

    def read(self, tiles: range | list[int]):
        """The staged batch of ``tiles``, which must be the next batch."""
        queued, staged = self._queued.popleft()
        if list(queued) != list(tiles):
            raise RuntimeError(f"tiles read out of order: expected {queued}, asked for {tiles}")
        batch = staged.result()
        self._fill()
        return batch

    def __enter__(self) -> TileReader:
        return self

    def __exit__(self, *_exc) -> None:
        # Reads in flight must finish before the caller closes the slide (OpenSlide aborts the
        # process otherwise), even if a second Ctrl-C or a SIGTERM lands while we wait.
        for pool in (self._pool, self._stager):
            while True:
                try:
                    pool.shutdown(wait=True, cancel_futures=True)
                    break
                except KeyboardInterrupt:
                    continue
