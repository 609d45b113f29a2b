"""A run: every job of a request translated one after another on one runner, each failing alone.

The threads and processes of a run, who starts them, and the order they stop in:

- The caller's thread feeds the model (``pipeline.translate``) and owns the slide. A stop
  (``stopping.Stop``: Ctrl-C, SIGTERM under the ``dn`` command) is raised there: inside the
  model's forward, or where the thread waits on another.
- ``dn-read_N`` and ``dn-stage_0`` (``prefetch.TileReader``, started by the slide's loop): read
  tiles ahead and stage them for the device; shut down when the loop leaves its ``with`` block,
  error or not — first of the slide's threads to stop.
- ``dn-write`` (``output_stage.OutputStage``): waits for each batch's pixels and hands them to the
  sink in raster order; it reports progress, so a stop or a claim taken over is raised there and
  reaches the caller at its next hand-over. Joined by ``close``, or drained and joined by ``abort``.
- ``dn-tiffsave`` and its ``dn-tiff-encode`` pool (``pyramid_tiff.PyramidTiffSink``): write the
  pyramid; ``close`` waits for them, ``abort`` stops them at the next strip — after the output
  stage, which feeds them. While the caller waits it asks the ``should_stop`` it was given.
- ``dn-claim`` (``claims.Claim``): the slide's claim's heartbeat; stopped when the claim is
  released, after the slide's files are published or discarded — last.
- With ``devices``: a worker process per device (``devices.Pool``, named ``dn-<device>``), each
  running this loop with a ``dn-parent-watch`` thread that stops it if the parent dies; the
  parent's ``Dealer`` stops them with SIGTERM, then SIGKILL after ``devices.STOP_GRACE``.

Every hand-over between threads (``handover.Handover``) waits in steps of ``handover.POLL``
seconds, so a stop or a failure on the other side is heard within one.
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
