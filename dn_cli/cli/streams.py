"""Standard streams that cannot stop a translation: closed at start, or closed by their reader.

A slide is worth more than a progress line. ``dn translate a b c --json | head -1`` closes stdout
after one line; ``dn … 2>&-`` starts without stderr. Either way the translations go on: lines
for a reader that has gone are dropped (the stream's descriptor then points at /dev/null, so
nothing complains again, not even Python on exit). A descriptor closed at start is filled with
/dev/null too, so that no output file dn opens can take its number and receive stray messages.
"""

from __future__ import annotations

import io
import os
import sys

STREAMS = ("stdin", "stdout", "stderr")
closed_at_start: set[str] = set()  # which of the three were closed when dn started


def _to_devnull(fd: int) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    if null != fd:
        os.dup2(null, fd)
        os.close(null)


class _Survivor(io.TextIOBase):
    """A text stream that turns a vanished reader into silence instead of an error."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.gone = False

    def __getattr__(self, name):  # buffer, isatty...: the real stream's
        return getattr(self._stream, name)

    @property
    def encoding(self) -> str:  # TextIOBase's own would hide the stream's, and click would bypass this one
        return self._stream.encoding

    @property
    def errors(self) -> str:
        return self._stream.errors

    def fileno(self) -> int:
        return self._stream.fileno()

    def _guard(self, action, *args):
        if self.gone:
            return None
        try:
            return action(*args)
        except (BrokenPipeError, ConnectionResetError, ValueError, OSError):
            self.gone = True
            try:
                _to_devnull(self._stream.fileno())
            except (OSError, ValueError):
                pass
            return None

    def write(self, text: str) -> int:
        self._guard(self._stream.write, text)
        return len(text)

    def flush(self) -> None:
        self._guard(self._stream.flush)

    def writable(self) -> bool:
        return True


def guard_streams() -> None:
    """Fill closed standard descriptors with /dev/null and make stdout and stderr survive their readers."""
    for fd, name in enumerate(STREAMS):
        try:
            os.fstat(fd)
        except OSError:
            closed_at_start.add(name)
            _to_devnull(fd)
    for fd, name in enumerate(STREAMS):
        if getattr(sys, name) is None:  # Python found it closed: give it the /dev/null just opened
            mode = "r" if fd == 0 else "w"
            setattr(sys, name, open(fd, mode, encoding="utf-8", errors="surrogateescape", closefd=False))
    sys.stdout = _Survivor(sys.stdout)
    sys.stderr = _Survivor(sys.stderr)


def is_closed(name: str) -> bool:
    """Whether stream ``name`` was closed at start (tests running in-process: never)."""
    return name in closed_at_start
