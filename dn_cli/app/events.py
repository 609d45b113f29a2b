"""How the application reports as it works, without printing: an ``Events`` object it is handed.

The ``dn`` command's events print (``cli.report``); the Python face's log through
``logging.getLogger("dn")`` and pass tile progress to the caller's callback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from dn_cli.app.results import SlideResult

log = logging.getLogger("dn")


class Progress(Protocol):
    """Told the tiles done of a slide's total as it is translated; closed at the end."""

    def __call__(self, done: int, total: int) -> None: ...

    def close(self) -> None: ...


class Events(Protocol):
    def warning(self, message: str) -> None:
        """Something the user may not expect, and should know: the work goes on."""

    def error(self, message: str) -> None:
        """Something failed that is no one slide's (a device the model cannot start on)."""

    def note(self, message: str) -> None:
        """What dn decided (``--verbose``), or is about to do for a while."""

    def progress(self, label: str) -> Progress:
        """The progress of the slide (or, across devices, of the run) named ``label``."""

    def finished(self, result: SlideResult, label: str) -> None:
        """One input's outcome, as it is known."""


class NoProgress:
    def __call__(self, done: int, total: int) -> None:
        pass

    def close(self) -> None:
        pass


class CallbackProgress:
    """Hands a slide's progress to ``callback(label, done, total)``."""

    def __init__(self, callback: Callable[[str, int, int], None], label: str) -> None:
        self.callback, self.label = callback, label

    def __call__(self, done: int, total: int) -> None:
        self.callback(self.label, done, total)

    def close(self) -> None:
        pass


class Logged:
    """The library's events: warnings and notes through ``logging``, progress to a callback."""

    def __init__(
        self,
        on_progress: Callable[[str, int, int], None] | None = None,
        on_result: Callable[[SlideResult], None] | None = None,
    ) -> None:
        self.on_progress, self.on_result = on_progress, on_result

    def warning(self, message: str) -> None:
        log.warning(message)

    def error(self, message: str) -> None:
        log.error(message)

    def note(self, message: str) -> None:
        log.info(message)

    def progress(self, label: str) -> Progress:
        return NoProgress() if self.on_progress is None else CallbackProgress(self.on_progress, label)

    def finished(self, result: SlideResult, label: str) -> None:
        if result.error:
            log.error("%s: %s", result.input, result.error)
        if self.on_result is not None:
            self.on_result(result)
