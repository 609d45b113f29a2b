"""The last stage of the pipeline on its own thread: translated batches to the sink, in raster order.

Waiting for a batch's pixels to reach the host, checking them, and copying them into the
sink's rows all happen here, so the loop that feeds the model goes on to the next batch at
once. A bounded queue keeps memory flat; an error here reaches the feeding loop at its next
hand-over, and stopping leaves no thread behind.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import numpy as np

from dn_cli.geometry import TileGrid
from dn_cli.images import Sink


class OutputStage:
    """Writes hand-overs to ``sink``: every tile of a step in order, the translated ones from their
    batch's result, skipped ones as ``background``.

    Args:
        progress: called with (tiles written, tiles total) after each hand-over is written.
    """

    def __init__(
        self,
        sink: Sink,
        grid: TileGrid,
        background: np.ndarray,
        progress: Callable[[int, int], None] | None = None,
        depth: int = 2,
    ) -> None:
        self._sink, self._grid, self._progress = sink, grid, progress
        self._glass = np.broadcast_to(background, (grid.tile_size, grid.tile_size, 3))
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="dn-write", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                tiles, translated, result = item
                pixels = {} if result is None else dict(zip(translated, result(), strict=True))
                for i in tiles:
                    box = self._grid.output_box(*self._grid.position(i))
                    self._sink.write(box, pixels.get(i, self._glass)[: box.height, : box.width])
                if self._progress is not None:
                    self._progress(tiles.stop, len(self._grid))
        except BaseException as e:  # reported to the feeding loop by put / close
            self._failure = e
            while self._queue.get() is not None:  # let the feeding loop go on to its next check
                pass

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def put(self, tiles: range, translated: list[int], result: Callable[[], np.ndarray] | None) -> None:
        """Hand over one step: its tiles, those of them translated, and the function that waits for
        their pixels (``TileRunner.apply_async``); raises what went wrong with an earlier step."""
        self._raise_failure()
        while True:
            try:
                self._queue.put((tiles, translated, result), timeout=0.5)
                return
            except queue.Full:  # the writer is behind: wait, but hear its failure and Ctrl-C
                self._raise_failure()

    def close(self) -> None:
        """Wait until everything handed over is written."""
        self._queue.put(None)
        while self._thread.is_alive():
            self._thread.join(timeout=0.5)
        self._raise_failure()

    def abort(self) -> None:
        """Stop without writing what is still queued."""
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
            self._thread.join(timeout=0.1)
