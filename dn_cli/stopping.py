"""Ctrl-C and ``kill`` (SIGTERM): dn stops, removing what it was writing.

A signal handler that raises can land while a C library calls back into Python (pyvips logs
through such a callback), where the exception is printed and dropped, and the signal lost. So
while a slide is being made the handler only notes the request, and the places where the main
thread waits or reports raise it — the slide's progress at each batch, the TIFF writer while it
is behind or finishing the pyramid — unwinding from a plain Python frame; outside a slide the
handler raises at once, and so it does inside the model's forward (:meth:`Stop.interruptible`),
which is Python and torch only and can run for many seconds on a CPU (or while it compiles).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Stop:
    asked = False
    busy = False

    @classmethod
    def handle(cls, _signum, _frame) -> None:
        first = not cls.asked
        cls.asked = True
        if first and not cls.busy:  # a second signal (Ctrl-C, then the parent's SIGTERM) must not
            raise KeyboardInterrupt  # break into the unwinding the first started

    @classmethod
    def check(cls) -> None:
        """Raise KeyboardInterrupt if a stop was asked for (at a point where unwinding is safe)."""
        if cls.asked:
            raise KeyboardInterrupt

    @classmethod
    @contextmanager
    def interruptible(cls):
        """Within (in the main thread, where signal handlers run): a stop raises at once, even while
        a slide is made. For code that no C library calls back into, so no exception is lost."""
        if threading.current_thread() is not threading.main_thread():
            yield  # the main thread may be in such a callback meanwhile
            return
        busy, cls.busy = cls.busy, False
        try:
            cls.check()
            yield
        finally:
            cls.busy = busy

    @classmethod
    @contextmanager
    def making_a_slide(cls):
        cls.check()
        cls.busy = True
        try:
            yield
        finally:
            cls.busy = False
        cls.check()


@contextmanager
def stopped_by_signals():
    """Within: SIGINT and SIGTERM stop dn through :class:`Stop` (main thread only)."""
    Stop.asked = Stop.busy = False
    previous = {signum: signal.signal(signum, Stop.handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        Stop.asked = Stop.busy = False  # a stop is its run's: later work in this process goes on
