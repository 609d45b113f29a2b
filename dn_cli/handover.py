"""Work handed to one thread through a short queue: the output stage and the TIFF writer both.

The feeding thread never blocks for long: every wait (a full queue, the worker finishing) is cut
into ``POLL``-second steps, and between them it hears a stop (``should_stop``) and the worker's
failure. The worker's failure is kept and raised on the feeding side at its next hand-over;
``abort`` stops the worker without waiting for what is still queued.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

POLL = 0.2  # seconds: how long a waiting thread goes before it looks for a stop or a failure

Item = TypeVar("Item")


def never() -> bool:
    return False


class Handover(Generic[Item]):
    """Items for ``work``, run on a thread named ``name``; ``None`` ends them.

    Args:
        work: the worker: called with ``take``, which returns the next item (``None``: the end).
        depth: items queued at most (memory stays flat while the worker is behind).
        should_stop: asked while the feeding thread waits; True raises KeyboardInterrupt there.
        failed: turns the worker's failure into what the feeding side raises (default: itself).
    """

    def __init__(
        self,
        work: Callable[[Callable[[], Item | None]], None],
        name: str,
        depth: int = 2,
        should_stop: Callable[[], bool] = never,
        failed: Callable[[BaseException], BaseException] = lambda e: e,
    ) -> None:
        self.failure: BaseException | None = None
        self._queue: queue.Queue[Item | None] = queue.Queue(maxsize=depth)
        self._should_stop, self._failed = should_stop, failed
        self._thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[Callable[[], Item | None]], None]) -> None:
        try:
            work(self._queue.get)
        except BaseException as e:  # raised on the feeding side by put / close
            self.failure = e
            while self._queue.get() is not None:  # let the feeding side go on to its next check
                pass

    @property
    def alive(self) -> bool:
        """Whether the worker thread still runs."""
        return self._thread.is_alive()

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self._failed(self.failure) from self.failure

    def _check(self) -> None:
        self.raise_failure()
        if self._should_stop():
            raise KeyboardInterrupt

    def put(self, item: Item | None) -> None:
        """Hand ``item`` over, waiting while the queue is full; raises the worker's failure."""
        while True:
            self._check()
            if not self._thread.is_alive():  # the worker has finished early: only the end may find it so
                if item is not None:
                    raise self._failed(RuntimeError("the writer stopped"))
                return
            try:
                self._queue.put(item, timeout=POLL)
                return
            except queue.Full:
                pass

    def close(self) -> None:
        """Hand over the end, and wait until the worker has done everything; raises its failure."""
        self.put(None)
        while self._thread.is_alive():
            self._thread.join(timeout=POLL)
            if self._should_stop():
                raise KeyboardInterrupt
        self.raise_failure()

    def abort(self) -> None:
        """Stop the worker without doing what is still queued, and wait for it."""
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
            self._thread.join(timeout=POLL / 2)
