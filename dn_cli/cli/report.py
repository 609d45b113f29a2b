"""What ``dn translate`` says as it runs: the application's events, printed.

People get a progress bar and a line per slide on stderr; pipelines get ``--json``, a line per
slide on stdout; errors and warnings go to stderr as ``dn: error: …`` and ``dn: warning: …``.
"""

from __future__ import annotations

import json

import click
from tqdm import tqdm

from dn_cli.app.results import SlideResult, Status, summary


class TqdmBar:
    """A progress bar on stderr, made on the first report, when the tile count is known."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.label, self.quiet, self.bar = label, quiet, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, unit="tile", desc=self.label, disable=self.quiet, leave=False)
        if total != self.bar.total:  # across devices, the total grows as slides begin
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def say(text: str) -> None:
    with tqdm.external_write_mode():  # a bar's lock: a line is not cut by a bar's refresh
        click.echo(text, err=True)


class Printed:
    """The events of ``dn translate``, printed. ``verbose``: notes too; ``quiet``: no bar, no
    per-slide lines (``--json`` lines stay)."""

    def __init__(self, *, as_json: bool = False, quiet: bool = False, verbose: bool = False) -> None:
        self.as_json, self.quiet, self.verbose = as_json, quiet, verbose

    def warning(self, message: str) -> None:
        say(f"dn: warning: {message}")

    def error(self, message: str) -> None:
        say(f"dn: error: {message}")

    def note(self, message: str) -> None:
        if self.verbose:
            say(f"dn: {message}")

    def progress(self, label: str) -> TqdmBar:
        return TqdmBar(label, self.quiet)

    def finished(self, result: SlideResult, label: str) -> None:
        if result.status == Status.FAILED:
            say(f"dn: error: {result.input}: {result.error}")
        text = None
        if result.status != Status.NOT_ATTEMPTED and not self.quiet:  # each input still gets its JSON line
            why = f" ({result.reason})" if result.reason else ""
            text = f"{label}: {result.status}{why} → {result.output}"
        emit(result.record(), self.as_json, text)

    def summary(self, results: list[SlideResult]) -> None:
        """The run's summary, for a batch or after a failure."""
        if len(results) > 1 or any(r.status == Status.FAILED for r in results):
            say(summary(results))


def emit(record: dict, as_json: bool, text: str | None) -> None:
    """A finished slide: a JSON line on stdout for pipelines, or a line on stderr for people."""
    if as_json:
        click.echo(json.dumps(record))
    elif text:
        say(text)
