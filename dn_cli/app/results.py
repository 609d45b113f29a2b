"""What became of each slide: a result per input, as the JSON lines and the Python face give it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class Status(StrEnum):
    DONE = "done"  # translated
    COMPLETED = "completed"  # its output existed: the files an earlier run left missing were made
    SKIPPED = "skipped"
    FAILED = "failed"
    NOT_ATTEMPTED = "not attempted"  # after a failure, with fail_fast


class Why(StrEnum):
    """Why a slide was skipped: the words its ``reason`` starts with."""

    EXISTS = "exists"
    DONE_ELSEWHERE = "done by another run"
    BEING_TRANSLATED = "another dn run is translating it"
    MADE_MEANWHILE = "made meanwhile by another run"  # with other settings: kept, and said

    @property
    def by_another_run(self) -> bool:
        return self in (Why.DONE_ELSEWHERE, Why.BEING_TRANSLATED)


@dataclass
class SlideResult:
    """One input's outcome. ``record()`` is its ``--json`` line."""

    input: Path
    output: Path
    status: Status
    why: Why | None = None  # skipped only
    reason: str | None = None  # skipped: in words (starts with ``why``'s)
    made_with: str | None = None  # skipped: how the existing output was made otherwise
    error: str | None = None  # failed: one line
    made: list[Path] = field(default_factory=list)  # completed: the files made
    width: int | None = None  # done: the translated image's size and pixel size
    height: int | None = None
    mpp: float | None = None
    tiles: int | None = None
    tiles_skipped: int | None = None  # glass
    seconds: float | None = None

    @classmethod
    def skipped(cls, why: Why, detail: str = "", made_with: str | None = None) -> SlideResult:
        """A skip, its reason ``why`` in words followed by ``detail``; input and output filled in later."""
        return cls(Path(), Path(), Status.SKIPPED, why, why.value + detail, made_with)

    def record(self) -> dict:
        """The JSON line: input, output, status, and what the status has to say."""
        record = {"input": str(self.input), "output": str(self.output), "status": self.status.value}
        if self.status == Status.SKIPPED:
            record["reason"] = self.reason
            if self.made_with:
                record["made_with"] = self.made_with
        elif self.status == Status.FAILED:
            record["error"] = self.error
        elif self.status == Status.COMPLETED:
            record["made"] = [str(p) for p in self.made]
        elif self.status == Status.DONE:
            sizes = ("width", "height", "mpp", "tiles", "tiles_skipped", "seconds")
            record |= {name: getattr(self, name) for name in sizes}
        return record

    @property
    def ok(self) -> bool:
        return self.status not in (Status.FAILED, Status.NOT_ATTEMPTED)


def summary(results: list[SlideResult]) -> str:
    """``8 inputs: 3 translated, 4 done by other runs, 1 skipped, 0 failed``: every input counted once."""
    count = lambda status, by_others=False: sum(  # noqa: E731
        r.status == status and (r.why is not None and r.why.by_another_run) == by_others for r in results
    )
    elsewhere = sum(r.why == Why.DONE_ELSEWHERE for r in results)
    being = sum(r.why == Why.BEING_TRANSLATED for r in results)
    parts = [f"{count(Status.DONE)} translated"]
    if completed := count(Status.COMPLETED):
        parts.append(f"{completed} completed")
    if elsewhere:
        parts.append(f"{elsewhere} done by other runs")
    if being:
        parts.append(f"{being} being translated by other runs")
    parts += [f"{count(Status.SKIPPED)} skipped", f"{count(Status.FAILED)} failed"]
    if untried := count(Status.NOT_ATTEMPTED):
        parts.append(f"{untried} not attempted (--fail-fast)")
    failed = [r.input.name for r in results if r.status == Status.FAILED]
    inputs = f"{len(results)} input{'' if len(results) == 1 else 's'}"
    return f"{inputs}: {', '.join(parts)}" + (f" ({', '.join(failed)})" if failed else "")
