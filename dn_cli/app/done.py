"""What a slide's outputs already are: which files to make, and whether another run made them.

A job is done when every file asked for it exists: the output, its provenance record and the
pictures. A rerun makes only what is missing (a preview asked for later, a record a full disk
prevented); an output dn did not write is never taken for done, and never replaced without
``overwrite``.
"""

from __future__ import annotations

import json
from pathlib import Path

from dn_cli.app.batch import Job
from dn_cli.app.claims import holder_of, runs_started
from dn_cli.app.results import SlideResult, Why
from dn_cli.app.settings import BEFORE_RECORDED, OPTIONS, Run
from dn_cli.errors import OutputError, first_line
from dn_cli.image_io import image_description
from dn_cli.outputs import check_name, is_busy
from dn_cli.provenance import read_sidecar


def recorded_provenance(job: Job) -> dict | None:
    """The provenance of an existing output: its record, or its TIFF's description; None if dn did
    not write it."""
    if job.sidecar.exists():
        return read_sidecar(job.sidecar)
    try:
        record = json.loads(image_description(job.output) or "")
    except ValueError:
        return None
    return record if isinstance(record, dict) and str(record.get("software", "")).startswith("dn ") else None


def files_to_make(job: Job, overwrite: bool) -> tuple[list[Path], dict | None]:
    """(the files of ``job`` to write, the provenance of its existing output when only completing it)."""
    for path in job.files:  # every name it will write, before any work: a record that cannot follow its output
        check_name(path)
    if overwrite or not job.output.exists():
        if not overwrite and (existing := [p for p in job.files[1:] if p.exists()]):  # the record too
            raise OutputError(f"{existing[0]} exists (use --overwrite to replace it)")
        return job.files, None
    missing = [p for p in job.files if not p.exists()]
    if not missing:
        return [], None
    record = recorded_provenance(job)
    if record is None:
        raise OutputError(
            f"{job.output} exists but dn did not write it (no {job.sidecar.name}): "
            "left as it is; --overwrite replaces it"
        )
    return missing, record


def made_beside(job: Job, run: Run) -> bool:
    """Whether ``job``'s output was published by a run working beside this one: while this run
    ran, or — with overwrite, which replaces what existed before — since a run still sharing the
    folder began, with this run's model and settings (runs started at different times replace
    each old output once between them, not once each)."""
    try:
        published = job.output.stat().st_mtime
    except OSError:
        return False
    if published >= run.started:
        return True
    return (
        run.overwrite
        and published >= min([run.started, *runs_started(job.output.parent)])
        and not differences(job, run)
    )


def plan(job: Job, run: Run) -> tuple[list[Path], dict | None, SlideResult | None]:
    """(the files of ``job`` to make, the provenance of its existing output when only completing
    it, and — only if there is nothing to make — why it is skipped)."""
    beside = made_beside(job, run)
    todo, record = files_to_make(job, run.overwrite and not beside)
    if todo:  # with another run's output: the pictures it was not asked for
        return todo, record, None
    if differs := differences(job, run):  # a rerun, or another run, with other settings must not pass for done
        what = "another model" if differs.startswith("another model") else "other settings"
        if beside:
            return [], None, SlideResult.skipped(Why.MADE_MEANWHILE, f", with {what}", differs)
        return [], None, SlideResult.skipped(Why.EXISTS, f", made with {what}", differs)
    return [], None, SlideResult.skipped(Why.DONE_ELSEWHERE if beside else Why.EXISTS)


def differences(job: Job, run: Run) -> str:
    """How the existing output of ``job`` was made otherwise than ``run`` would make it (its
    model, then the options that differ), or "" if alike or unknown."""
    record = recorded_provenance(job) or {}
    made_with = record.get("model_sha256")
    if made_with not in (None, run.model.sha256):
        return f"another model (sha256 {made_with[:12]}…, not {run.model.name})"
    recorded = record.get("options")
    if not isinstance(recorded, dict):
        return ""  # made before dn recorded its options: the model is all that can be compared
    mine = run.settings.options()
    recorded = BEFORE_RECORDED | recorded
    given = [
        f"no {flag}" if recorded.get(name) is None else f"{flag} {recorded[name]}"
        for name, flag in OPTIONS.items()
        if recorded.get(name) != mine[name]
    ]
    return f"other settings ({', '.join(given)})" if given else ""


def dry_run_action(job: Job, overwrite: bool, one_file: bool) -> str:
    """What a real run would do with ``job``, decided as it would decide (nothing is removed)."""
    if holder_of(job.output) or any(is_busy(p) for p in job.files):
        return "refuse (another dn run is writing it)" if one_file else "skip (another dn run is writing it)"
    try:
        todo, record = files_to_make(job, overwrite)
    except OutputError as e:  # what the real run would fail on (a picture in the way, a foreign output)
        return f"fail ({first_line(e)})"
    if not todo:
        return "refuse (exists; --overwrite replaces it)" if one_file else "skip (exists)"
    return "translate" if record is None else f"complete ({', '.join(p.name for p in todo)})"
