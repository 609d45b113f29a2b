"""One slide's job: claim it, translate it into temporaries, publish them; nothing half-written.

Whether there is anything to make is ``done``'s to say; this module makes it. A slide another run
holds, or has made, is skipped; one whose claim is taken over while it is made (this run
stalled) is dropped, the other run making it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dn_cli.app.array import find_tissue
from dn_cli.app.batch import Job
from dn_cli.app.claims import Claim, ClaimHeld, ClaimLost, claim
from dn_cli.app.done import plan
from dn_cli.app.events import Events, Progress
from dn_cli.app.results import SlideResult, Status, Why
from dn_cli.app.settings import Run
from dn_cli.errors import OutputError, plural, reason
from dn_cli.geometry import TileGrid, fit_grid
from dn_cli.image_io import open_sink, save_picture, thumbnail_file
from dn_cli.images import ImageSource
from dn_cli.levels import plausible_mpp
from dn_cli.outputs import Partial, clear_stale_partials
from dn_cli.pipeline import TileRunner
from dn_cli.pipeline import translate as run_translation
from dn_cli.policies import collects
from dn_cli.preview import side_by_side
from dn_cli.provenance import provenance, write_sidecar
from dn_cli.slides import SlideImage
from dn_cli.sources import open_source
from dn_cli.stopping import Stop
from dn_cli.tiff_image import TiffImage, is_tiff, other_images
from dn_cli.tissue import overlay

PREVIEW_SIDE = 800


@dataclass(frozen=True)
class Slide:
    """One job of a run, with what making it needs: the runner, the run, how to report."""

    job: Job
    runner: TileRunner
    run: Run
    label: str
    events: Events


def translate_one(slide: Slide) -> SlideResult:
    """Translate ``slide.job.source``, or make what an earlier run left missing, unless another run
    has done or is doing it."""
    job, run = slide.job, slide.run
    if (skipped := plan(job, run)[2]) is not None:
        return skipped
    try:
        held = claim(job.output, run.started)
    except ClaimHeld as e:
        return SlideResult.skipped(Why.BEING_TRANSLATED, f": {e}" if str(e) else "")
    try:
        busy = any([clear_stale_partials(path, run.started) for path in job.files])  # every one cleared: a list
        if busy and not held.took_over:  # a live temporary without a claim (a dn from before claims)
            return SlideResult.skipped(Why.BEING_TRANSLATED)
        # With a claim taken over, a live temporary is the stalled run's: it drops the slide when it
        # finds its claim gone, and this run makes it.
        todo, record, skipped = plan(job, run)  # looked at again: finished before our claim?
        if skipped is not None:
            return skipped
        return make_files(slide, todo, record, held)
    except ClaimLost:
        return SlideResult.skipped(Why.DONE_ELSEWHERE, " (this one stalled and its claim was taken over)")
    finally:
        held.release()


def make_files(slide: Slide, todo: list[Path], record: dict | None, held: Claim) -> SlideResult:
    """Write ``todo`` (every file of the job, or those an earlier run left missing, ``record``
    being its provenance) as temporaries, then publish them."""
    job, s = slide.job, slide.run.settings
    start = time.perf_counter()
    parts: dict[Path, Partial] = {}
    result = SlideResult(job.source, job.output, Status.COMPLETED, made=todo)
    try:
        for path in todo:  # an unwritable folder fails here, before any work
            parts[path] = Partial(path)
        resolution = {"level": s.level, "mpp": s.mpp, "mpp_override": s.mpp_override}
        with open_source(job.source, **resolution, allow_upsampling=s.allow_upsampling) as source:
            is_slide = warn_about_source(slide, source)
            grid = fit_grid(
                source.width, source.height, s.tile_size, s.margin, slide.runner.stride, slide.runner.min_size
            )
            active = mask = None
            if s.tissue if s.tissue is not None else is_slide or job.tissue_mask is not None:
                active, mask = tissue_tiles(slide, source, grid, parts.get(job.tissue_mask))
            if job.output in parts:
                record = make_output(slide, parts[job.output], source, grid, active, held)
                result = SlideResult(job.source, job.output, Status.DONE, width=source.width, height=source.height)
                result.mpp, result.tiles = source.mpp, len(grid)
                result.tiles_skipped = 0 if active is None else int((~active).sum())
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
                parts[path].publish(overwrite=slide.run.overwrite)
    finally:
        for part in parts.values():
            part.discard()  # what was not published
    if preview_failed is not None:
        why = reason(preview_failed)
        raise OutputError(f"the preview failed ({why}); {job.output.name} is made and kept") from preview_failed
    if result.status == Status.DONE:
        result.seconds = round(time.perf_counter() - start, 2)
    return result


def make_output(
    slide: Slide, part: Partial, source: ImageSource, grid: TileGrid, active: np.ndarray | None, held: Claim
) -> dict:
    """Translate ``source`` into the output's temporary ``part``; returns its provenance record."""
    runner, s = slide.runner, slide.run.settings
    compiling = choose_compile(slide, grid, active)
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
    model = slide.run.model
    record = provenance(slide.job.source, model.where, model.sha256, model.loaded().family, settings)
    translate_into(part, source, slide, record, grid, active, held)
    runner.learn()
    return record


def choose_compile(slide: Slide, grid: TileGrid, active: np.ndarray | None) -> str:
    """Whether this slide runs compiled, and why, in words (the provenance records it, a note
    says it): ``--compile auto`` on a CPU compiles where this slide's forwards make it pay."""
    runner, s = slide.runner, slide.run.settings
    model = slide.run.model.sha256[:16]
    key = f"{model} {runner.precision} {grid.padded_size}px ×{s.batch_size} torch {torch.__version__}"
    warn = slide.events.warning
    runner.learn_as(key, warn)  # a compiled run on a CPU, asked for or chosen, teaches the next choice
    if s.compile_model != "auto" or runner.device.type != "cpu":
        return f"--compile {s.compile_model}" + (f" on {runner.device.type}" if s.compile_model == "auto" else "")
    if runner.compiled:
        return "compiled: compiled for an earlier slide of this run"
    tiles = len(grid) if active is None else int(active.sum())
    passes = 1 + (4 if s.moment_stride == "half" else 1) * collects(s.policy)  # collect forwards, then one apply
    choice = runner.compile_if_it_pays(tiles * passes, grid.padded_size, s.batch_size, key, warn)
    slide.events.note(f"{slide.label}: {choice}")
    return choice


def warn_about_source(slide: Slide, source: ImageSource) -> bool:
    """Say what about ``source`` the user may not expect; returns whether it is a slide (not a picture)."""
    job, s = slide.job, slide.run.settings
    is_slide = isinstance(source, (SlideImage, TiffImage))  # TIFFs OpenSlide leaves out are slide exports too
    recorded = source.recorded_mpp
    if is_slide and s.mpp_override is None and recorded is not None and plausible_mpp(recorded) is None:
        slide.events.warning(  # pictures (PNG, JPEG) carry 72 dpi all the time: said for slides only
            f"{job.source}: its {recorded:g} µm per pixel is a screen or print default, "
            "not a microscope's: taken as unknown (--mpp-override gives the real one)"
        )
    if not isinstance(source, SlideImage) and is_tiff(job.source) and (more := other_images(job.source)):
        slide.events.warning(
            f"{job.source} holds {plural(more, 'more image')} besides the first, not levels "
            "of a pyramid: only the first is translated"
        )
    return is_slide


def tissue_tiles(
    slide: Slide, source: ImageSource, grid: TileGrid, picture: Partial | None
) -> tuple[np.ndarray, np.ndarray]:
    """(the tiles to translate, the tissue mask); the mask drawn into ``picture`` if asked."""
    min_tissue = slide.run.settings.min_tissue
    active, mask, thumbnail = find_tissue(source, grid, min_tissue, slide.events.warning, str(slide.job.source))
    if picture is not None:
        save_picture(overlay(thumbnail, mask, active, grid), picture.path, name=picture.final.name)
    return active, mask


def translate_into(
    part: Partial,
    source: ImageSource,
    slide: Slide,
    record: dict,
    grid: TileGrid,
    active: np.ndarray | None,
    held: Claim,
) -> None:
    """Translate ``source`` into the output's temporary ``part``, reporting progress; stops if a
    stop is asked for or ``held`` is taken over."""
    s = slide.run.settings
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
        should_stop=lambda: Stop.asked,
    )
    progress: Progress = slide.events.progress(slide.label)

    def tiles_done(done: int, total: int) -> None:
        Stop.check()
        if held.lost:
            raise ClaimLost()
        progress(done, total)

    try:
        run_translation(
            source,
            sink,
            slide.runner,
            policy=s.policy,
            grid=grid,
            moment_stride=s.moment_stride_px(grid.tile_size),
            batch_size=s.batch_size,
            progress=tiles_done,
            active=active,
        )
    finally:
        progress.close()
