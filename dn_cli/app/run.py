"""A run: every job of a request translated one after another on one runner, each failing alone.

The threads and processes of a run, who starts them, and the order they stop in:

- the caller's thread feeds the model (``pipeline.translate``) and owns the slide; it is where
  a stop (``stopping.Stop``: Ctrl-C, SIGTERM) is raised, at each batch's progress report.
- ``dn-read-N`` (``prefetch.TileReader``): read and stage tiles ahead; stopped and joined when
  the slide's loop leaves its ``with`` block, error or not.
- ``dn-write`` (``output_stage.OutputStage``): waits for each batch's pixels and hands them to the
  sink in raster order; joined by ``close``, or drained and joined by ``abort``.
- ``dn-tiffsave`` and the ``dn-tiff-encode`` pool (``pyramid_tiff.PyramidTiffSink``): write the
  pyramid; ``close`` waits for them, ``abort`` stops them at the next strip. They ask the
  ``should_stop`` callable they are given (``Stop.asked`` here), not the signal policy.
- ``dn-claim`` (``claims.Claim``): a claim's heartbeat; stopped when the claim is released,
  after the slide's files are published or discarded.
- ``--devices``: worker processes (``devices.Pool``), each running this same loop on its
  device with a ``dn-parent-watch`` thread that stops it if the parent dies; the parent's
  ``Dealer`` stops them with SIGTERM (a minute's grace, then SIGKILL) when it is stopped itself.
Every hand-over between threads waits in steps of ``handover.POLL`` seconds, so a stop or a
failure on the other side is heard within one.
"""

from __future__ import annotations

from dn_cli.app.batch import Job
from dn_cli.app.events import Events
from dn_cli.app.results import SlideResult, Status, Why
from dn_cli.app.settings import Run
from dn_cli.app.slide import Slide, translate_one
from dn_cli.errors import OutputError, reason
from dn_cli.pipeline import TileRunner
from dn_cli.stopping import Stop


def label_of(job: Job, number: int, total: int) -> str:
    return f"[{number}/{total}] {job.source.name}" if total > 1 else job.source.name


def attempt(slide: Slide, *, one_file: bool, debug: bool = False) -> SlideResult:
    """Translate one job. In a batch a slide's failure is its result; one file's failure, or any
    with ``debug``, is raised, as is a skip one file cannot take (exists, being written)."""
    job = slide.job
    try:
        with Stop.making_a_slide():
            result = translate_one(slide)
        result.input, result.output = job.source, job.output
        if one_file and result.why in (Why.EXISTS, Why.BEING_TRANSLATED):
            if result.why == Why.BEING_TRANSLATED:
                raise OutputError(f"{job.output} is being written by another dn run")
            if result.made_with:
                raise OutputError(f"{job.output} exists, made with {result.made_with}; use --overwrite to replace it")
            raise OutputError(f"{job.output} exists (use --overwrite to replace it)")
        if result.made_with:
            when = " meanwhile by another run" if result.why == Why.MADE_MEANWHILE else ""
            slide.events.warning(f"{job.output} was made{when} with {result.made_with}: kept; --overwrite replaces it")
    except Exception as e:  # in a batch each slide fails alone; one file's error is the caller's
        if one_file or debug:
            raise
        return SlideResult(job.source, job.output, Status.FAILED, error=reason(e, unexpected="unexpected "))
    return result


def not_attempted(job: Job) -> SlideResult:
    return SlideResult(job.source, job.output, Status.NOT_ATTEMPTED)


def run_jobs(
    jobs: list[Job], runner: TileRunner, run: Run, events: Events, *, one_file: bool = False, debug: bool = False
) -> list[SlideResult]:
    """Translate every job in order, telling ``events`` each outcome; returns them."""
    results: list[SlideResult] = []
    for number, job in enumerate(jobs, 1):
        label = label_of(job, number, len(jobs))
        if run.fail_fast and any(r.status == Status.FAILED for r in results):
            result = not_attempted(job)
        else:
            result = attempt(Slide(job, runner, run, label, events), one_file=one_file, debug=debug)
        events.finished(result, label)
        results.append(result)
    return results
