"""Running the jobs of ``dn translate``: one slide at a time, each failing alone, nothing half-written.

A job is done when every file asked for it exists: the output, its provenance record and the
pictures. A rerun makes only what is missing (a preview asked for later, a record a full disk
prevented); an output dn did not write is never taken for done, and never replaced without
``--overwrite``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import click
import numpy as np
import torch
from tqdm import tqdm

from dn_cli.batch import Job
from dn_cli.claims import Claim, ClaimHeld, ClaimLost, claim, runs_started
from dn_cli.errors import OutputError, plural, reason
from dn_cli.geometry import TileGrid, fit_grid
from dn_cli.image_io import image_description, open_sink, save_picture, thumbnail_file
from dn_cli.images import ImageSource
from dn_cli.levels import plausible_mpp
from dn_cli.outputs import Partial, check_name, clear_stale_partials
from dn_cli.pipeline import TileRunner
from dn_cli.pipeline import translate as run_translation
from dn_cli.policies import collects
from dn_cli.preview import side_by_side
from dn_cli.provenance import provenance, read_sidecar, write_sidecar
from dn_cli.slides import SlideImage
from dn_cli.sources import open_source
from dn_cli.stopping import Stop
from dn_cli.tiff_image import TiffImage, is_tiff, other_images
from dn_cli.tissue import overlay, select_tiles

PREVIEW_SIDE = 800


class Progress(Protocol):
    """Told the tiles done of a slide's total as it is translated; closed at the end."""

    def __call__(self, done: int, total: int) -> None: ...

    def close(self) -> None: ...


BarFactory = Callable[[str, bool], Progress]  # (label, quiet) → the progress of one slide


class TqdmBar:
    """A slide's progress bar on stderr, made on the first report, when the tile count is known."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.label, self.quiet, self.bar = label, quiet, None

    def __call__(self, done: int, total: int) -> None:
        Stop.check()
        if self.bar is None:
            self.bar = tqdm(total=total, unit="tile", desc=self.label, disable=self.quiet, leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass(frozen=True)
class Settings:
    """Everything about how one slide is translated, shared by every slide of a batch."""

    model_path: Path
    model_sha256: str
    family: str
    level: int | None
    mpp: float | None
    mpp_override: float | None
    allow_upsampling: bool
    policy: str
    tile_size: int
    margin: int
    batch_size: int
    compression: str
    quality: int
    tissue: bool | None
    min_tissue: float
    ome: bool
    quiet: bool
    compile_model: str = "off"  # --compile: on a CPU, auto decides slide by slide
    verbose: bool = False

    def options(self) -> dict:
        """The options that decide an output's pixels and bytes, as its provenance records them."""
        return {name: getattr(self, name) for name in OPTIONS}


# Settings that decide what an output holds, and the options that give them: an output made with
# other values is not taken for this run's.
OPTIONS = {
    "level": "--level",
    "mpp": "--mpp",
    "mpp_override": "--mpp-override",
    "policy": "--norm",
    "tile_size": "--tile-size",
    "margin": "--margin",
    "tissue": "--tissue",
    "min_tissue": "--min-tissue",
    "compression": "--compression",
    "quality": "--quality",
}


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


BEING_TRANSLATED = "another dn run is translating it"
DONE_ELSEWHERE = "done by another run"


def translate_one(
    job: Job,
    runner: TileRunner,
    s: Settings,
    label: str,
    *,
    overwrite: bool,
    started: float,
    bar: BarFactory = TqdmBar,
) -> dict:
    """Translate ``job.source``, or make what an earlier run left missing, unless another run has
    done or is doing it; returns what was done, for --json. ``started``: when this run began."""
    if (skipped := plan(job, s, overwrite, started)[2]) is not None:
        return skipped
    try:
        held = claim(job.output, started)
    except ClaimHeld as e:
        return {"status": "skipped", "reason": BEING_TRANSLATED + (f": {e}" if str(e) else "")}
    try:
        busy = any([clear_stale_partials(path, started) for path in job.files])  # every one cleared: a list
        if busy and not held.took_over:  # a live temporary without a claim (a dn from before claims)
            return {"status": "skipped", "reason": BEING_TRANSLATED}
        # With a claim taken over, a live temporary is the stalled run's: it drops the slide when it
        # finds its claim gone, and this run makes it.
        todo, record, skipped = plan(job, s, overwrite, started)  # looked at again: finished before our claim?
        if skipped is not None:
            return skipped
        return make_files(job, todo, record, runner, s, label, overwrite=overwrite, held=held, bar=bar)
    except ClaimLost:
        return {"status": "skipped", "reason": f"{DONE_ELSEWHERE} (this one stalled and its claim was taken over)"}
    finally:
        held.release()


def made_beside(job: Job, s: Settings, overwrite: bool, started: float) -> bool:
    """Whether ``job``'s output was published by a run working beside this one: while this run
    ran, or — with --overwrite, which replaces what existed before — since a run still sharing the
    folder began, with this run's model and settings (runs started at different times replace
    each old output once between them, not once each)."""
    try:
        published = job.output.stat().st_mtime
    except OSError:
        return False
    if published >= started:
        return True
    return overwrite and published >= min([started, *runs_started(job.output.parent)]) and not differences(job, s)


def plan(job: Job, s: Settings, overwrite: bool, started: float) -> tuple[list[Path], dict | None, dict | None]:
    """(the files of ``job`` to make, the provenance of its existing output when only completing
    it, and — only if there is nothing to make — the record of what it was skipped for)."""
    beside = made_beside(job, s, overwrite, started)
    todo, record = files_to_make(job, overwrite and not beside)
    if todo:  # with another run's output: the pictures it was not asked for
        return todo, record, None
    if differs := differences(job, s):  # a rerun, or another run, with other settings must not pass for done
        what = "another model" if differs.startswith("another model") else "other settings"
        reason = f"made meanwhile by another run, with {what}" if beside else f"exists, made with {what}"
        return [], None, {"status": "skipped", "reason": reason, "made_with": differs}
    return [], None, {"status": "skipped", "reason": DONE_ELSEWHERE if beside else "exists"}


def differences(job: Job, s: Settings) -> str:
    """How the existing output of ``job`` was made otherwise than this run would make it (its
    model, then the options that differ), or "" if alike or unknown."""
    record = recorded_provenance(job) or {}
    made_with = record.get("model_sha256")
    if made_with not in (None, s.model_sha256):
        return f"another model (sha256 {made_with[:12]}…, not {s.model_path.name})"
    recorded = record.get("options")
    if not isinstance(recorded, dict):
        return ""  # made before dn recorded its options: the model is all that can be compared
    mine = s.options()
    given = [
        f"no {flag}" if recorded.get(name) is None else f"{flag} {recorded[name]}"
        for name, flag in OPTIONS.items()
        if recorded.get(name) != mine[name]
    ]
    return f"other settings ({', '.join(given)})" if given else ""


def make_files(
    job: Job,
    todo: list[Path],
    record: dict | None,
    runner: TileRunner,
    s: Settings,
    label: str,
    *,
    overwrite: bool,
    held: Claim,
    bar: BarFactory,
) -> dict:
    """Write ``todo`` (every file of ``job``, or those an earlier run left missing, ``record``
    being its provenance) as temporaries, then publish them; returns what was done."""
    start = time.perf_counter()
    parts: dict[Path, Partial] = {}
    try:
        for path in todo:  # an unwritable folder fails here, before any work
            parts[path] = Partial(path)
        with open_source(
            job.source, level=s.level, mpp=s.mpp, mpp_override=s.mpp_override, allow_upsampling=s.allow_upsampling
        ) as source:
            slide = warn_about_source(job, source, s)
            grid = fit_grid(source.width, source.height, s.tile_size, s.margin, runner.stride, runner.min_size)
            active = mask = None
            if s.tissue if s.tissue is not None else slide or job.tissue_mask is not None:
                active, mask = tissue_tiles(job, source, grid, s, parts.get(job.tissue_mask))
            if job.output in parts:
                compiling = choose_compile(runner, s, grid, active, label)
                settings = {
                    "norm": s.policy,
                    "tile_size": grid.tile_size,
                    "margin": s.margin,
                    "mpp": source.mpp,
                    "tissue_tiles": None if active is None else int(active.sum()),
                    "device": runner.device.type,
                    "precision": runner.precision,
                    "compiled": runner.compiled,  # within a grey level of eager, not bit for bit
                    "compile_choice": compiling,
                    "options": s.options(),  # what a later run compares its own with
                }
                record = provenance(job.source, s.model_path, s.model_sha256, s.family, settings)
                translate_into(parts[job.output], source, runner, s, record, grid, active, bar(label, s.quiet), held)
                runner.learn()
            if job.sidecar in parts:
                write_sidecar(parts[job.sidecar].path, record)
            preview_failed = None
            if job.preview in parts:
                try:
                    before = source.thumbnail(PREVIEW_SIDE)
                    output = parts[job.output].path if job.output in parts else job.output
                    after = thumbnail_file(output, before.shape[1], before.shape[0])  # the same scale
                    save_picture(side_by_side(before, after, mask), parts[job.preview].path, name=job.preview.name)
                except Exception as e:  # a picture must not cost the translation: that is published
                    preview_failed = e
        held.confirm()  # read now: a run that was stopped may not have heard yet
        for path in todo:  # the output first: linking it claims the name
            if not (path == job.preview and preview_failed):
                parts[path].publish(overwrite=overwrite)
    finally:
        for part in parts.values():
            part.discard()  # what was not published
    if preview_failed is not None:
        e = preview_failed
        why = reason(e)
        raise OutputError(f"the preview failed ({why}); {job.output.name} is made and kept") from e
    if job.output not in parts:
        return {"status": "completed", "made": [str(p) for p in todo]}
    return {
        "status": "done",
        "width": source.width,
        "height": source.height,
        "mpp": source.mpp,
        "tiles": len(grid),
        "tiles_skipped": 0 if active is None else int((~active).sum()),
        "seconds": round(time.perf_counter() - start, 2),
    }


def choose_compile(runner: TileRunner, s: Settings, grid: TileGrid, active: np.ndarray | None, label: str) -> str:
    """Whether this slide runs compiled, and why, in words (the provenance records it, ``--verbose``
    says it): ``--compile auto`` on a CPU compiles where this slide's forwards make it pay."""
    key = f"{s.model_sha256[:16]} {runner.precision} {grid.padded_size}px ×{s.batch_size} torch {torch.__version__}"
    warn = lambda message: click.echo(f"dn: warning: {message}", err=True)  # noqa: E731
    runner.learn_as(key, warn)  # a compiled run on a CPU, asked for or chosen, teaches the next choice
    if s.compile_model != "auto" or runner.device.type != "cpu":
        return f"--compile {s.compile_model}" + (f" on {runner.device.type}" if s.compile_model == "auto" else "")
    if runner.compiled:
        return "compiled: compiled for an earlier slide of this run"
    tiles = len(grid) if active is None else int(active.sum())
    passes = 2 if collects(s.policy) else 1
    choice = runner.compile_if_it_pays(tiles * passes, grid.padded_size, s.batch_size, key, warn)
    if s.verbose:
        click.echo(f"dn: {label}: {choice}", err=True)
    return choice


def warn_about_source(job: Job, source: ImageSource, s: Settings) -> bool:
    """Say what about ``source`` the user may not expect; returns whether it is a slide (not a picture)."""
    slide = isinstance(source, (SlideImage, TiffImage))  # TIFFs OpenSlide leaves out are slide exports too
    recorded = getattr(source, "recorded_mpp", None)
    if slide and s.mpp_override is None and recorded is not None and plausible_mpp(recorded) is None:
        click.echo(  # pictures (PNG, JPEG) carry 72 dpi all the time: said for slides only
            f"dn: warning: {job.source}: its {recorded:g} µm per pixel is a screen or print default, "
            "not a microscope's: taken as unknown (--mpp-override gives the real one)",
            err=True,
        )
    if not isinstance(source, SlideImage) and is_tiff(job.source) and (more := other_images(job.source)):
        click.echo(
            f"dn: warning: {job.source} holds {plural(more, 'more image')} besides the first, not levels "
            "of a pyramid: only the first is translated",
            err=True,
        )
    return slide


def tissue_tiles(
    job: Job, source: ImageSource, grid: TileGrid, s: Settings, picture: Partial | None
) -> tuple[np.ndarray, np.ndarray]:
    """(the tiles to translate, the tissue mask); the mask drawn into ``picture`` if asked."""
    active, mask, thumbnail = select_tiles(source, grid, min_tissue=s.min_tissue)
    if not active.any():  # tissue too faint to see: erasing the whole image would be worse
        click.echo(f"dn: warning: {job.source}: no tissue found; translating every tile", err=True)
        active[:] = True
    if picture is not None:
        save_picture(overlay(thumbnail, mask, active, grid), picture.path, name=picture.final.name)
    return active, mask


def translate_into(
    part: Partial,
    source: ImageSource,
    runner: TileRunner,
    s: Settings,
    record: dict,
    grid: TileGrid,
    active: np.ndarray | None,
    progress: Progress,
    held: Claim,
) -> None:
    """Translate ``source`` into the output's temporary ``part``, telling ``progress``; stops if
    ``held`` is taken over."""
    sink = open_sink(
        part.path,
        source.width,
        source.height,
        mpp=source.mpp,
        compression=s.compression,
        quality=s.quality,
        description=json.dumps(record),
        ome=s.ome,
        name=part.final.name,
    )

    def tiles_done(done: int, total: int) -> None:
        if held.lost:
            raise ClaimLost()
        progress(done, total)

    try:
        run_translation(
            source,
            sink,
            runner,
            policy=s.policy,
            tile_size=grid.tile_size,
            margin=grid.margin,
            batch_size=s.batch_size,
            progress=tiles_done,
            active=active,
        )
    finally:
        progress.close()


def attempt(
    job: Job,
    runner: TileRunner,
    settings: Settings,
    label: str,
    *,
    one_file: bool,
    overwrite: bool,
    started: float,
    debug: bool,
    bar: BarFactory = TqdmBar,
) -> dict:
    """Translate one job; returns its record. In a batch a slide's failure is its record; one
    file's failure, or any with --debug, is raised."""
    record = {"input": str(job.source), "output": str(job.output)}
    try:
        record |= translate_one(job, runner, settings, label, overwrite=overwrite, started=started, bar=bar)
        differs = record.get("made_with")
        if one_file and record["status"] == "skipped":
            if record["reason"].startswith("exists") and differs:
                raise OutputError(f"{job.output} exists, made with {differs}; use --overwrite to replace it")
            if record["reason"].startswith("exists"):
                raise OutputError(f"{job.output} exists (use --overwrite to replace it)")
            if record["reason"].startswith(BEING_TRANSLATED):
                raise OutputError(f"{job.output} is being written by another dn run")
        if differs:
            when = " meanwhile by another run" if record["reason"].startswith("made meanwhile") else ""
            warning = f"{job.output} was made{when} with {differs}: kept; --overwrite replaces it"
            click.echo(f"dn: warning: {warning}", err=True)
    except Exception as e:  # in a batch each slide fails alone; one file's error is the command's
        if one_file or debug:
            raise
        message = reason(e, unexpected="unexpected ")
        record |= {"status": "failed", "error": message}
    return record


def label_of(job: Job, number: int, total: int) -> str:
    return f"[{number}/{total}] {job.source.name}" if total > 1 else job.source.name


class Tally:
    """What a run did with each input: a line (or JSON line) per input, counts, and the summary."""

    def __init__(self, inputs: int, as_json: bool, quiet: bool) -> None:
        self.inputs, self.as_json, self.quiet = inputs, as_json, quiet
        statuses = ["done", "completed", "skipped", "failed", "not attempted", DONE_ELSEWHERE, BEING_TRANSLATED]
        self.counts = dict.fromkeys(statuses, 0)
        self.failed: list[str] = []

    def add(self, record: dict, label: str) -> None:
        if record["status"] == "failed":
            click.echo(f"dn: error: {record['input']}: {record['error']}", err=True)
            self.failed.append(Path(record["input"]).name)
        self.counts[by_others(record) or record["status"]] += 1
        if record["status"] == "not attempted":  # each input still gets its line, so the counts add up
            emit(record, self.as_json, None)
            return
        text = f"{label}: {record['status']}" + (f" ({record['reason']})" if "reason" in record else "")
        emit(record, self.as_json, None if self.quiet else f"{text} → {record['output']}")

    def not_attempted(self, job: Job) -> None:
        self.add({"input": str(job.source), "output": str(job.output), "status": "not attempted"}, "")

    def finish(self) -> list[str]:
        """Says the summary (for a batch, or after a failure); returns the failed names."""
        if self.inputs > 1 or self.failed:
            click.echo(summary(self.counts, self.inputs, self.failed), err=True)
        return self.failed


def run_jobs(
    jobs: list[Job],
    runner: TileRunner,
    settings: Settings,
    *,
    one_file: bool,
    overwrite: bool,
    fail_fast: bool,
    as_json: bool,
    debug: bool,
    started: float,
) -> list[str]:
    """Translate every job; in a batch each fails alone. Returns the failed names. ``started``: when
    the run began (outputs newer are other runs'; unlocked temporaries older, dead runs')."""
    tally = Tally(len(jobs), as_json, settings.quiet)
    for number, job in enumerate(jobs, 1):
        if tally.failed and fail_fast:
            tally.not_attempted(job)
            continue
        label = label_of(job, number, len(jobs))
        options = {"one_file": one_file, "overwrite": overwrite, "started": started, "debug": debug}
        with Stop.making_a_slide():
            record = attempt(job, runner, settings, label, **options)
        tally.add(record, label)
    return tally.finish()


def by_others(record: dict) -> str | None:
    """DONE_ELSEWHERE or BEING_TRANSLATED if another run has the slide, else None."""
    reason = record.get("reason", "")
    return next((key for key in (DONE_ELSEWHERE, BEING_TRANSLATED) if reason.startswith(key)), None)


def summary(counts: dict[str, int], inputs: int, failed: list[str]) -> str:
    """``8 inputs: 3 translated, 4 done by other runs, 1 skipped, 0 failed``: every input counted once."""
    parts = [f"{counts['done']} translated"]
    if counts["completed"]:
        parts.append(f"{counts['completed']} completed")
    if counts[DONE_ELSEWHERE]:
        parts.append(f"{counts[DONE_ELSEWHERE]} done by other runs")
    if counts[BEING_TRANSLATED]:
        parts.append(f"{counts[BEING_TRANSLATED]} being translated by other runs")
    parts += [f"{counts['skipped']} skipped", f"{counts['failed']} failed"]
    if counts["not attempted"]:
        parts.append(f"{counts['not attempted']} not attempted (--fail-fast)")
    return f"{plural(inputs, 'input')}: {', '.join(parts)}" + (f" ({', '.join(failed)})" if failed else "")


def emit(record: dict, as_json: bool, text: str | None) -> None:
    """A finished slide: a JSON line on stdout for pipelines, or a line on stderr for people."""
    if as_json:
        click.echo(json.dumps(record))
    elif text:
        click.echo(text, err=True)
