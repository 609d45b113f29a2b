"""``dn translate``: images and whole slides in, their translations out; one or a whole batch."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
from tqdm import tqdm

from dn_cli.batch import DEFAULT_PATTERNS, expand_inputs, output_for, parse_shard, shard
from dn_cli.cli.options import debug_option, model_options, model_path_option
from dn_cli.device import PRECISIONS, autocast_dtype, select_device
from dn_cli.errors import DnError, first_line
from dn_cli.geometry import TileGrid, check_geometry, default_margin
from dn_cli.image_io import TIFF_COMPRESSIONS, check_output, open_sink, save_png, thumbnail_file
from dn_cli.models import load_generator
from dn_cli.pipeline import POLICIES, TileRunner
from dn_cli.pipeline import translate as run_translation
from dn_cli.preview import side_by_side
from dn_cli.provenance import provenance, write_sidecar
from dn_cli.slides import SlideImage
from dn_cli.sources import open_source
from dn_cli.tissue import overlay, select_tiles


@dataclass(frozen=True)
class Settings:
    """Everything about how one slide is translated, shared by every slide of a batch."""

    model_path: Path
    family: str
    level: int | None
    mpp: float | None
    mpp_override: float | None
    policy: str
    tile_size: int
    margin: int
    batch_size: int
    compression: str
    quality: int
    tissue: bool | None
    min_tissue: float
    tissue_mask: Path | None
    preview: Path | None
    ome: bool
    quiet: bool


def translate_one(source_path: Path, output: Path, runner: TileRunner, s: Settings, label: str) -> dict:
    """Translate one image or slide into ``output``; returns what was done, for --json."""
    start = time.perf_counter()
    with open_source(source_path, level=s.level, mpp=s.mpp, mpp_override=s.mpp_override) as source:
        grid = TileGrid(source.width, source.height, s.tile_size, s.margin)
        active = mask = None
        if s.tissue if s.tissue is not None else isinstance(source, SlideImage):  # default: on for slides only
            active, mask, thumbnail = select_tiles(source, grid, min_tissue=s.min_tissue)
            if s.tissue_mask is not None:
                save_png(overlay(thumbnail, mask, active, grid), picture_path(s.tissue_mask, source_path, "tissue"))
        settings = {
            "norm": s.policy,
            "tile_size": s.tile_size,
            "margin": s.margin,
            "mpp": source.mpp,
            "tissue_tiles": None if active is None else int(active.sum()),
        }
        record = provenance(source_path, s.model_path, s.family, settings)
        sink = open_sink(
            output,
            source.width,
            source.height,
            mpp=source.mpp,
            compression=s.compression,
            quality=s.quality,
            description=json.dumps(record),
            ome=s.ome,
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
                tile_size=s.tile_size,
                margin=s.margin,
                batch_size=s.batch_size,
                progress=progress,
                active=active,
            )
        finally:
            for bar in bars:
                bar.close()
        write_sidecar(output, record)
        if s.preview is not None:
            after = thumbnail_file(output, PREVIEW_SIDE)
            before = source.thumbnail(max(after.shape[:2]))
            save_png(side_by_side(before, after, mask), picture_path(s.preview, source_path, "preview"))
        return {
            "width": source.width,
            "height": source.height,
            "mpp": source.mpp,
            "tiles": len(grid),
            "tiles_skipped": 0 if active is None else int((~active).sum()),
            "seconds": round(time.perf_counter() - start, 2),
        }


PREVIEW_SIDE = 800


def picture_path(option: Path, source: Path, kind: str) -> Path:
    """A .png option is the picture itself; anything else is a folder for NAME_kind.png."""
    return option if option.suffix.lower() == ".png" else option / f"{source.stem}_{kind}.png"


def read_inputs(inputs: tuple[Path, ...]) -> list[Path]:
    """The paths given, with ``-`` replaced by the paths on stdin (one per line)."""
    paths = [p for p in inputs if str(p) != "-"]
    if any(str(p) == "-" for p in inputs):
        paths += [Path(line.strip()) for line in sys.stdin if line.strip()]
    return paths


@click.command()
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Output file for one input (.tif pyramidal, .png, .jpg); otherwise (several inputs, or no "
    "extension) a folder of NAME.tif.",
)
@model_path_option
@model_options
@click.option(
    "--level", type=click.IntRange(min=0), default=None, help="Slide pyramid level to translate [default: 0]."
)
@click.option(
    "--mpp",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Translate at this pixel size (µm): the nearest finer level, shrunk by area averaging.",
)
@click.option(
    "--mpp-override",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Full-resolution pixel size (µm) to assume when the file records none.",
)
@click.option(
    "--norm",
    "policy",
    type=click.Choice(POLICIES),
    default="dn",
    show_default=True,
    help="Normalisation: dn dense, in per tile, kin 3×3 kernel, tin thumbnail.",
)
@click.option("--tile-size", type=click.IntRange(min=8), default=512, show_default=True, help="Tile side in pixels.")
@click.option(
    "--margin",
    type=click.IntRange(min=0),
    default=None,
    help="Context read around each tile [default: smallest ≥ 16 the model accepts].",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Tiles per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="auto",
    show_default=True,
    help="Model precision on the device (statistics stay float32); auto is fp16 on CUDA.",
)
@click.option(
    "--tissue/--no-tissue",
    default=None,
    help="Detect tissue and skip glass tiles [default: on for whole-slide images, off for ordinary images].",
)
@click.option(
    "--compression",
    type=click.Choice(TIFF_COMPRESSIONS),
    default="jpeg",
    show_default=True,
    help="Compression of pyramidal TIFF outputs.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["tiff", "ome-tiff"]),
    default="tiff",
    show_default=True,
    help="TIFF flavour: tiff (OpenSlide, tifffile, QuPath) or ome-tiff (OME-XML and SubIFDs, for Bio-Formats).",
)
@click.option(
    "--quality", type=click.IntRange(1, 100), default=85, show_default=True, help="JPEG / WebP quality of TIFF outputs."
)
@click.option(
    "--min-tissue",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Tiles with at most this fraction of tissue are filled as glass and masked out of DN (0: no tissue).",
)
@click.option(
    "--tissue-mask",
    type=click.Path(path_type=Path),
    default=None,
    help="Save a tissue QC overlay: a .png path, or a folder for NAME_tissue.png per slide.",
)
@click.option(
    "--preview",
    type=click.Path(path_type=Path),
    default=None,
    help="Save a side-by-side thumbnail (input | output): a .png path, or a folder for NAME_preview.png.",
)
@click.option("--recursive", is_flag=True, help="Search input folders recursively.")
@click.option(
    "--pattern",
    "patterns",
    multiple=True,
    help="File pattern for input folders (repeatable) [default: slide and image formats].",
)
@click.option(
    "--shard",
    "shard_spec",
    default=None,
    help="Translate only shard K of N of the sorted inputs (e.g. $SLURM_ARRAY_TASK_ID/8).",
)
@click.option("--fail-fast", is_flag=True, help="Stop at the first slide that fails.")
@click.option("--dry-run", is_flag=True, help="List what would be done, and do nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per slide on stdout.")
@click.option(
    "--overwrite", is_flag=True, help="Replace existing outputs (otherwise: refused for one file, skipped in a batch)."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@debug_option
@click.pass_context
def translate(
    ctx: click.Context,
    *,
    inputs: tuple[Path, ...],
    output: Path,
    model_path: Path,
    arch: str | None,
    trust_code: bool,
    level: int | None,
    mpp: float | None,
    mpp_override: float | None,
    policy: str,
    tile_size: int,
    margin: int | None,
    batch_size: int,
    device: str,
    precision: str,
    tissue: bool | None,
    min_tissue: float,
    tissue_mask: Path | None,
    preview: Path | None,
    compression: str,
    output_format: str,
    quality: int,
    recursive: bool,
    patterns: tuple[str, ...],
    shard_spec: str | None,
    fail_fast: bool,
    dry_run: bool,
    as_json: bool,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Translate INPUT images or slides with a generator, tile by tile, without tiling artifacts.

    INPUT may be files, folders (searched for slides and images), or - to read paths from stdin.
    """
    if level is not None and mpp is not None:
        raise click.UsageError("--level and --mpp choose the same thing: give one")
    paths = read_inputs(inputs)
    slides = expand_inputs(paths, recursive=recursive, patterns=patterns or DEFAULT_PATTERNS)
    if shard_spec:
        slides = shard(slides, *parse_shard(shard_spec))
    # One file in and an output with an extension: that file. Otherwise -o is a folder.
    one_file = (
        len(paths) == 1
        and not paths[0].is_dir()
        and "-" not in map(str, inputs)
        and bool(output.suffix)
        and not output.is_dir()
    )
    if one_file:
        check_output(output, overwrite)
        jobs = [(paths[0], output)]
    else:
        suffix = ".ome.tif" if output_format == "ome-tiff" else ".tif"
        jobs = [(source, output_for(source, output, suffix)) for source in slides]
    if not jobs:
        raise DnError(f"no slides or images found in {', '.join(map(str, paths)) or 'stdin'}")

    if dry_run:
        for source, target in jobs:
            action = "skip (exists)" if target.exists() and not overwrite and not one_file else "translate"
            emit(
                {"input": str(source), "output": str(target), "action": action},
                as_json,
                f"{action}: {source} → {target}",
            )
        return

    torch_device = select_device(device)
    generator = load_generator(model_path, arch=arch, trust_code=trust_code)
    for warning in generator.warnings:
        click.echo(f"dn: warning: {warning}", err=True)
    margin = default_margin(tile_size, generator.stride) if margin is None else margin
    check_geometry(tile_size, margin, generator.stride)  # once, before any slide
    runner = TileRunner(generator, torch_device, autocast_dtype(precision, torch_device))
    settings = Settings(
        model_path=model_path,
        family=generator.family,
        level=level,
        mpp=mpp,
        mpp_override=mpp_override,
        policy=policy,
        tile_size=tile_size,
        margin=margin,
        batch_size=batch_size,
        compression=compression,
        quality=quality,
        tissue=tissue,
        min_tissue=min_tissue,
        tissue_mask=tissue_mask,
        preview=preview,
        ome=output_format == "ome-tiff",
        quiet=quiet,
    )

    failed = run_jobs(
        jobs,
        runner,
        settings,
        one_file=one_file,
        overwrite=overwrite,
        fail_fast=fail_fast,
        as_json=as_json,
        debug=ctx.meta.get("dn.debug", False),
    )
    if failed:
        ctx.exit(1)


def run_jobs(
    jobs: list[tuple[Path, Path]],
    runner: TileRunner,
    settings: Settings,
    *,
    one_file: bool,
    overwrite: bool,
    fail_fast: bool,
    as_json: bool,
    debug: bool,
) -> list[str]:
    """Translate every (input, output) job; in a batch each fails alone. Returns the failed names."""
    counts = {"done": 0, "skipped": 0, "failed": 0}
    failed: list[str] = []
    for number, (source, target) in enumerate(jobs, 1):
        record = {"input": str(source), "output": str(target)}
        label = f"[{number}/{len(jobs)}] {source.name}" if len(jobs) > 1 else source.name
        if not one_file and target.exists() and not overwrite:
            record["status"] = "skipped"
        else:
            try:
                record |= translate_one(source, target, runner, settings, label) | {"status": "done"}
            except Exception as e:  # in a batch each slide fails alone; one file's error is the command's
                if one_file or debug:
                    raise
                message = first_line(e) if isinstance(e, DnError) else f"unexpected {type(e).__name__}: {first_line(e)}"
                click.echo(f"dn: error: {source}: {message}", err=True)
                record |= {"status": "failed", "error": message}
                failed.append(source.name)
        counts[record["status"]] += 1
        emit(record, as_json, None if settings.quiet else f"{label}: {record['status']} → {target}")
        if failed and fail_fast:
            break
    if len(jobs) > 1 or failed:
        summary = (
            f"{len(jobs)} inputs: {counts['done']} translated, {counts['skipped']} skipped, {counts['failed']} failed"
        )
        click.echo(summary + (f" ({', '.join(failed)})" if failed else ""), err=True)
    return failed


def emit(record: dict, as_json: bool, text: str | None) -> None:
    """A finished slide: a JSON line on stdout for pipelines, or a line on stderr for people."""
    if as_json:
        click.echo(json.dumps(record))
    elif text:
        click.echo(text, err=True)
