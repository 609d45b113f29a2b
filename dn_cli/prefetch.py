"""Padded tile reads on a small thread pool, running ahead of the model.

OpenSlide and numpy release the GIL while reading and copying, so a few threads keep the next
batches ready while the current one is on the model.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from dn_cli.geometry import TileGrid
from dn_cli.images import ImageSource, read_padded


class TileReader:
    """Reads the given batches of tiles, in order, ``ahead`` batches before they are asked for."""

    def __init__(
        self, source: ImageSource, grid: TileGrid, batches: Iterable[range], *, workers: int = 4, ahead: int = 2
    ) -> None:
        self._source, self._grid, self._ahead = source, grid, ahead
        self._batches = iter(batches)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dn-read")
        self._queued: deque[tuple[range, list[Future]]] = deque()
        try:
            self._fill()
        except BaseException:
            self.__exit__()
            raise

    def _read(self, index: int) -> np.ndarray:
        return read_padded(self._source, self._grid.padded_box(*self._grid.position(index)))

    def _fill(self) -> None:
        while len(self._queued) < self._ahead and (tiles := next(self._batches, None)) is not None:
            self._queued.append((tiles, [self._pool.submit(self._read, i) for i in tiles]))

    def read(self, tiles: range) -> list[np.ndarray]:
        """The padded pixels of ``tiles``, which must be the next batch."""
        queued, futures = self._queued.popleft()
        if queued != tiles:
            raise RuntimeError(f"tiles read out of order: expected {queued}, asked for {tiles}")
        pixels = [f.result() for f in futures]
        self._fill()
        return pixels

    def __enter__(self) -> TileReader:
        return self

    def __exit__(self, *_exc) -> None:
        # Reads in flight must finish before the caller closes the slide (OpenSlide aborts the
        # process otherwise), even if a second Ctrl-C or a SIGTERM lands while we wait.
        while True:
            try:
                self._pool.shutdown(wait=True, cancel_futures=True)
                return
            except KeyboardInterrupt:
                continue
