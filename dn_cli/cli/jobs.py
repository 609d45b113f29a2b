"""Running the jobs of ``dn translate``: one slide at a time, each failing alone, nothing half-written.

A job is done when every file asked for it exists: the output, its provenance record and the
pictures. A rerun makes only what is missing (a preview asked for later, a record a full disk
prevented); an output dn did not write is never taken for done, and never replaced without
``--overwrite``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from dn_cli.batch import Job
from dn_cli.errors import DnError, OutputError, first_line, plural
from dn_cli.geometry import TileGrid, fit_grid
from dn_cli.image_io import image_description, open_sink, save_picture, thumbnail_file
from dn_cli.images import ImageSource
from dn_cli.levels import plausible_mpp
from dn_cli.outputs import Partial, check_name, clear_stale_partials
from dn_cli.pipeline import TileRunner
from dn_cli.pipeline import translate as run_translation
from dn_cli.preview import side_by_side
from dn_cli.provenance import provenance, read_sidecar, write_sidecar
from dn_cli.slides import SlideImage
from dn_cli.sources import open_source
from dn_cli.tiff_image import TiffImage, is_tiff, other_images
from dn_cli.tissue import overlay, select_tiles

PREVIEW_SIDE = 800


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


def translate_one(job: Job, runner: TileRunner, s: Settings, label: str, *, overwrite: bool, started: float) -> dict:
    """Translate ``job.source``, or make what an earlier run left missing; returns what was done, for --json."""
    start = time.perf_counter()
    if any([clear_stale_partials(path, started) for path in job.files]):  # every one cleared, hence the list
        return {"status": "skipped", "reason": "another dn run is writing it"}
    todo, record = files_to_make(job, overwrite)
    if not todo:
        made_with = (recorded_provenance(job) or {}).get("model_sha256")
        if made_with not in (None, s.model_sha256):  # a rerun with a new model must not pass for done
            click.echo(
                f"dn: warning: {job.output} was made with another model (sha256 {made_with[:12]}…, "
                f"not {s.model_path.name}): kept; --overwrite replaces it",
                err=True,
            )
            return {"status": "skipped", "reason": "exists, made with another model"}
        return {"status": "skipped", "reason": "exists"}
    parts: dict[Path, Partial] = {}
    try:
        for path in todo:  # an unwritable folder fails here, before any work
            parts[path] = Partial(path)
        with open_source(
            job.source, level=s.level, mpp=s.mpp, mpp_override=s.mpp_override, allow_upsampling=s.allow_upsampling
        ) as source:
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
            grid = fit_grid(source.width, source.height, s.tile_size, s.margin, runner.stride, runner.min_size)
            active = mask = None
            detect = s.tissue if s.tissue is not None else slide or job.tissue_mask is not None
            if detect:
                active, mask, thumbnail = select_tiles(source, grid, min_tissue=s.min_tissue)
                if not active.any():  # tissue too faint to see: erasing the whole image would be worse
                    click.echo(f"dn: warning: {job.source}: no tissue found; translating every tile", err=True)
                    active[:] = True
                if job.tissue_mask in parts:
                    save_picture(
                        overlay(thumbnail, mask, active, grid), parts[job.tissue_mask].path, name=job.tissue_mask.name
                    )
            if job.output in parts:
                settings = {
                    "norm": s.policy,
                    "tile_size": grid.tile_size,
                    "margin": s.margin,
                    "mpp": source.mpp,
                    "tissue_tiles": None if active is None else int(active.sum()),
                    "device": runner.device.type,
                    "precision": runner.precision,
                    "compiled": runner.compiled,  # within a grey level of eager, not bit for bit
                }
                record = provenance(job.source, s.model_path, s.model_sha256, s.family, settings)
                translate_into(parts[job.output].path, job.output.name, source, runner, s, record, grid, active, label)
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
        for path in todo:  # the output first: linking it claims the name
            if not (path == job.preview and preview_failed):
                parts[path].publish(overwrite=overwrite)
    finally:
        for part in parts.values():
            part.discard()  # what was not published
    if preview_failed is not None:
        e = preview_failed
        why = first_line(e) if isinstance(e, DnError) else f"{type(e).__name__}: {first_line(e)}"
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


def translate_into(
    path: Path,
    name: str,
    source: ImageSource,
    runner: TileRunner,
    s: Settings,
    record: dict,
    grid: TileGrid,
    active: np.ndarray | None,
    label: str,
) -> None:
    """Translate ``source`` into the file ``path`` (the output ``name``'s temporary), with a progress bar."""
    sink = open_sink(
        path,
        source.width,
        source.height,
        mpp=source.mpp,
        compression=s.compression,
        quality=s.quality,
        description=json.dumps(record),
        ome=s.ome,
        name=name,
    )
    bars: list[tqdm] = []

    def progress(done: int, total: int) -> None:
        if not bars:  # made on the first report, when the tile count is known
            bars.append(tqdm(total=total, unit="tile", desc=label, disable=s.quiet, leave=False))
        bars[0].update(done - bars[0].n)

    try:
        run_translation(
            source,
            sink,
            runner,
            policy=s.policy,
            tile_size=grid.tile_size,
            margin=grid.margin,
            batch_size=s.batch_size,
            progress=progress,
            active=active,
        )
    finally:
        for bar in bars:
            bar.close()


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
) -> list[str]:
    """Translate every job; in a batch each fails alone. Returns the failed names."""
    started = time.time()  # temporaries older than this, and unlocked, were left by dead runs
    counts = {"done": 0, "completed": 0, "skipped": 0, "failed": 0, "not attempted": 0}
    failed: list[str] = []
    for number, job in enumerate(jobs, 1):
        if failed and fail_fast:  # each input still gets its line, so the counts add up
            counts["not attempted"] += 1
            emit({"input": str(job.source), "output": str(job.output), "status": "not attempted"}, as_json, None)
            continue
        record = {"input": str(job.source), "output": str(job.output)}
        label = f"[{number}/{len(jobs)}] {job.source.name}" if len(jobs) > 1 else job.source.name
        try:
            record |= translate_one(job, runner, settings, label, overwrite=overwrite, started=started)
            if one_file and record["status"] == "skipped":
                if record["reason"].startswith("exists"):
                    raise OutputError(f"{job.output} exists (use --overwrite to replace it)")
                raise OutputError(f"{job.output} is being written by another dn run")
        except Exception as e:  # in a batch each slide fails alone; one file's error is the command's
            if one_file or debug:
                raise
            message = first_line(e) if isinstance(e, DnError) else f"unexpected {type(e).__name__}: {first_line(e)}"
            click.echo(f"dn: error: {job.source}: {message}", err=True)
            record |= {"status": "failed", "error": message}
            failed.append(job.source.name)
        counts[record["status"]] += 1
        text = f"{label}: {record['status']}" + (f" ({record['reason']})" if "reason" in record else "")
        emit(record, as_json, None if settings.quiet else f"{text} → {job.output}")
    if len(jobs) > 1 or failed:
        parts = [f"{counts['done']} translated", f"{counts['skipped']} skipped", f"{counts['failed']} failed"]
        if counts["completed"]:
            parts.insert(1, f"{counts['completed']} completed")
        if counts["not attempted"]:
            parts.append(f"{counts['not attempted']} not attempted (--fail-fast)")
        summary = f"{plural(len(jobs), 'input')}: {', '.join(parts)}"
        click.echo(summary + (f" ({', '.join(failed)})" if failed else ""), err=True)
    return failed


def emit(record: dict, as_json: bool, text: str | None) -> None:
    """A finished slide: a JSON line on stdout for pipelines, or a line on stderr for people."""
    if as_json:
        click.echo(json.dumps(record))
    elif text:
        click.echo(text, err=True)
