"""``dn translate``: images and whole slides in, their translations out; one or a whole batch."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import click
from click.core import ParameterSource

from dn_cli import compiled
from dn_cli.batch import (
    DEFAULT_PATTERNS,
    Job,
    check_jobs,
    expand_inputs,
    largest_first,
    parse_shard,
    plan_jobs,
    shard,
)
from dn_cli.claims import holder_of
from dn_cli.cli.jobs import Settings, emit, files_to_make, run_jobs
from dn_cli.cli.options import Location, compile_option, debug_option, model_options, model_path_option
from dn_cli.cli.streams import is_closed
from dn_cli.cli.workers import Dealer, Shared, parse_devices
from dn_cli.device import PRECISIONS, autocast_dtype, select_device
from dn_cli.errors import DnError, OutputError, first_line, plural
from dn_cli.geometry import MAX_TILE, check_geometry, default_margin
from dn_cli.image_io import OUTPUT_SUFFIXES, PICTURE_SUFFIXES, check_output
from dn_cli.models import load_generator
from dn_cli.outputs import is_busy, shortened, too_long
from dn_cli.pipeline import TileRunner
from dn_cli.policies import POLICIES
from dn_cli.provenance import file_sha256
from dn_cli.tiff_tiles import TIFF_COMPRESSIONS


def read_inputs(inputs: tuple[Path, ...], null: bool = False) -> list[Path]:
    """The paths given, with ``-`` replaced by the paths on stdin: one per line, or ended by NUL
    bytes with ``null`` (``find -print0``). Names are bytes, as the file system keeps them."""
    paths = [p for p in inputs if str(p) != "-"]
    if any(str(p) == "-" for p in inputs):
        if is_closed("stdin") or sys.stdin is None:
            raise click.UsageError("- reads paths from stdin, but stdin is closed")
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
        if b"\0" in data and not null:
            raise click.UsageError("the paths on stdin are ended by NUL bytes (find -print0): -0 reads them")
        names = data.split(b"\0") if null else [line.strip() for line in data.splitlines()]
        paths += [Path(os.fsdecode(name)) for name in names if name]
    return paths


class PixelSize(click.ParamType):
    """A pixel size in µm: a finite number above 0."""

    name = "µm"

    def get_metavar(self, param, ctx=None) -> str:
        return "MICRONS"  # click would upper-case the name, turning µm into ΜM (a Greek capital mu)

    def convert(self, value, param, ctx) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number <= 0:
            self.fail(f"{value} is not a pixel size: give µm per pixel, a number above 0", param, ctx)
        return number


@click.command()
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True, type=Location())
@click.option(
    "-o",
    "--output",
    type=Location(),
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
    type=PixelSize(),
    default=None,
    help="Translate at this pixel size (µm): the nearest finer level, shrunk by area averaging.",
)
@click.option(
    "--allow-upsampling",
    is_flag=True,
    help="Accept an --mpp finer than the slide was scanned at, up to 4× (refused otherwise: no detail is gained).",
)
@click.option(
    "--mpp-override",
    type=PixelSize(),
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
@click.option(
    "--tile-size",
    type=click.IntRange(8, MAX_TILE),
    default=512,
    show_default=True,
    help="Tile side in pixels (a tile larger than the image shrinks to fit it).",
)
@click.option(
    "--margin",
    type=click.IntRange(min=0),
    default=None,
    help="Context read around each tile [default: smallest ≥ 16 the model accepts].",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Tiles per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option(
    "--devices",
    "devices_spec",
    metavar="LIST",
    help="Run on several devices at once, one worker each, slides dealt out biggest first: "
    "cuda:0,cuda:1 or all (every GPU); auto as --device auto; cpu,cpu runs two CPU workers.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="auto",
    show_default=True,
    help="Model precision on the device (statistics stay float32); auto is fp16 on CUDA.",
)
@compile_option(
    "auto",
    "Run the model through torch.compile (auto: on CUDA, and on a CPU for slides big enough to repay the "
    "compile); a model that cannot compile runs eagerly.",
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
    help="TIFF flavour: tiff (OpenSlide, tifffile) or ome-tiff (OME-XML and SubIFDs, the layout Bio-Formats reads).",
)
@click.option(
    "--quality", type=click.IntRange(1, 100), default=85, show_default=True, help="JPEG / WebP quality of TIFF outputs."
)
@click.option(
    "--min-tissue",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Tiles with at most this fraction of tissue are filled as glass and masked out of DN (0: no tissue).",
)
@click.option(
    "--tissue-mask",
    type=Location(),
    default=None,
    help="Save a tissue QC overlay (turns tissue detection on): a .png path, or a folder for NAME_tissue.png.",
)
@click.option(
    "--preview",
    type=Location(),
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
    help="Translate only shard K of N (K from 0) of the sorted inputs, e.g. $SLURM_ARRAY_TASK_ID/8 with --array=0-7.",
)
@click.option("-0", "--null", is_flag=True, help="Paths on stdin (-) end with NUL bytes, as find -print0 writes them.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first slide that fails.")
@click.option("--dry-run", is_flag=True, help="List what would be done, and do nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per slide on stdout.")
@click.option(
    "--overwrite", is_flag=True, help="Replace existing outputs (otherwise: refused for one file, skipped in a batch)."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("-v", "--verbose", is_flag=True, help="Say what dn decides for each slide (compiling, on a CPU).")
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
    allow_upsampling: bool,
    mpp_override: float | None,
    policy: str,
    tile_size: int,
    margin: int | None,
    batch_size: int,
    device: str,
    devices_spec: str | None,
    precision: str,
    compile_model: str,
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
    null: bool,
    fail_fast: bool,
    dry_run: bool,
    as_json: bool,
    overwrite: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    """Translate INPUT images or slides with a generator, tile by tile, with Dense Normalization.

    Measured on the demo model, tile borders score 1.03 on the seam score where the untiled model
    scores 1.00 and per-tile InstanceNorm 1.74 (1.0: no visible seam; docs/quality.md).

    INPUT may be files, folders (searched for slides and images), or - to read paths from stdin.
    """
    started = time.time()  # before the model loads: what other runs publish from now on is theirs
    if level is not None and mpp is not None:
        raise click.UsageError("--level and --mpp choose the same thing: give one")
    if tissue_mask is not None and tissue is False:
        raise click.UsageError("--tissue-mask draws the tissue detection that --no-tissue turns off: give one")
    if as_json and is_closed("stdout"):
        raise click.UsageError("--json writes to stdout, but stdout is closed")
    if devices_spec is not None and ctx.get_parameter_source("device") == ParameterSource.COMMANDLINE:
        raise click.UsageError("--device and --devices choose the same thing: give one")
    devices = parse_devices(devices_spec) if devices_spec is not None else [device]  # checked for --dry-run too
    paths = read_inputs(inputs, null)
    for path in [*paths, output, preview, tissue_mask]:
        if path is not None and (reason := too_long(path)):
            raise DnError(f"{shortened(path)}: {reason}")
    if not paths:
        raise DnError("no inputs: stdin held no paths" if "-" in map(str, inputs) else "no inputs")
    # One file in and an output with an extension: that file. Otherwise -o is a folder.
    folders = ctx.meta.get(Location.FOLDERS, set())  # given with a trailing slash: folders, whatever their names
    one_file = (
        len(paths) == 1 and not paths[0].is_dir() and bool(output.suffix) and not output.is_dir()
    ) and "output" not in folders
    if one_file:
        check_output(output)
    elif output.suffix.lower() in OUTPUT_SUFFIXES and not output.is_dir() and "output" not in folders:
        raise DnError(f"-o {output} names one file, but the inputs are {describe(paths)}: give a folder")
    elif output.exists() and not output.is_dir():
        raise DnError(f"-o {output} exists and is not a folder: give a folder for the outputs")
    elif same := [p for p in paths if p.is_dir() and os.path.realpath(p) == os.path.realpath(output)]:
        raise DnError(
            f"-o {output} is the input folder {same[0]}: a rerun would take its outputs for inputs; give another folder"
        )
    for option, value in (("--preview", preview), ("--tissue-mask", tissue_mask)):
        if value is None or value.is_dir() or value.suffix.lower() in PICTURE_SUFFIXES:
            continue
        if value.exists():
            raise DnError(f"{option} {value} exists and is not a folder or a .png / .jpg picture")
        if value.suffix and option.lstrip("-").replace("-", "_") not in folders:
            raise DnError(f"{option} {value}: pictures are .png or .jpg; for a folder, end it with /")
    found = expand_inputs(
        paths, recursive=recursive, patterns=patterns or DEFAULT_PATTERNS, skip=None if one_file else output
    )
    if not found:
        raise DnError(f"no slides or images found in {', '.join(map(str, paths))}")
    suffix = ".ome.tif" if output_format == "ome-tiff" else ".tif"
    jobs = plan_jobs(found, output, one_file=one_file, suffix=suffix, preview=preview, tissue_mask=tissue_mask)
    check_jobs(jobs)  # the whole list, so every shard of a job array refuses the same clashes
    warn_unused_options(ctx, jobs, compression)
    if shard_spec:
        k, n = parse_shard(shard_spec)
        jobs = shard(jobs, k, n)
        if not jobs:
            click.echo(f"dn: shard {k}/{n} of {plural(len(found), 'input')} is empty: nothing to do", err=True)
            return
    jobs = largest_first(jobs)  # after sharding: every task of an array shards the same sorted list

    if dry_run:
        for job in jobs:
            action = dry_run_action(job, overwrite, one_file)
            emit(
                {"input": str(job.source), "output": str(job.output), "action": action},
                as_json,
                f"{action}: {job.source} → {job.output}",
            )
        return

    torch_device = select_device(devices[0])
    dtype = autocast_dtype(precision, torch_device)
    if dtype is not None and torch_device.type == "cpu":
        click.echo(f"dn: warning: --precision {precision} on the CPU is many times slower than fp32", err=True)
    generator = load_generator(model_path, arch=arch, trust_code=trust_code)  # checked once, before any worker
    for warning in generator.warnings:
        click.echo(f"dn: warning: {warning}", err=True)
    margin = default_margin(tile_size, generator.stride) if margin is None else margin
    check_geometry(tile_size, margin, generator.stride)  # once, before any slide
    if compiled.wanted(compile_model, torch_device) and compile_model == "auto" and not quiet:
        click.echo("dn: compiling the model on first use (--compile off runs it as it is)", err=True)
    settings = Settings(
        model_path=model_path,
        model_sha256=file_sha256(model_path),
        family=generator.family,
        level=level,
        mpp=mpp,
        mpp_override=mpp_override,
        allow_upsampling=allow_upsampling,
        policy=policy,
        tile_size=tile_size,
        margin=margin,
        batch_size=batch_size,
        compression=compression,
        quality=quality,
        tissue=tissue,
        min_tissue=min_tissue,
        ome=output_format == "ome-tiff",
        quiet=quiet,
        compile_model=compile_model,
        verbose=verbose,
    )
    if devices_spec is not None and not one_file:  # one file: nothing to deal out, run on the first device
        cpu_workers = sum(select_device(name).type == "cpu" for name in devices)
        shared = Shared(
            model_path,
            arch,
            trust_code,
            precision,
            compile_model,
            settings,
            jobs,
            overwrite,
            started=started,
            threads=max(1, (os.cpu_count() or 1) // max(1, cpu_workers)),
        )
        failed = Dealer(shared, devices, fail_fast=fail_fast, as_json=as_json).run()
    else:
        runner = TileRunner(generator, torch_device, dtype)
        if compiled.wanted(compile_model, torch_device):
            runner.compile(lambda message: click.echo(f"dn: warning: {message}", err=True))
        failed = run_jobs(
            jobs,
            runner,
            settings,
            one_file=one_file,
            overwrite=overwrite,
            fail_fast=fail_fast,
            as_json=as_json,
            debug=ctx.meta.get("dn.debug", False),
            started=started,
        )
    if failed:
        ctx.exit(1)


def warn_unused_options(ctx: click.Context, jobs: list[Job], compression: str) -> None:
    """Say which output options have no effect on these outputs, and which readers a WebP TIFF loses."""
    pictures = [job.output for job in jobs if job.output.suffix.lower() in PICTURE_SUFFIXES]
    if len(pictures) == len(jobs):
        tiff_only = [("--compression", "compression"), ("--format", "output_format")]
        if all(p.suffix.lower() == ".png" for p in pictures):
            tiff_only.append(("--quality", "quality"))  # a .jpg takes it
        given = [flag for flag, name in tiff_only if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
        if given:
            click.echo(f"dn: warning: {' and '.join(given)} ignored: {pictures[0].name} is not a .tif", err=True)
    elif compression == "webp":
        click.echo(
            "dn: warning: --compression webp: OpenSlide (and the viewers built on it) cannot open WebP TIFFs; "
            "libvips and tifffile can",
            err=True,
        )


def describe(paths: list[Path]) -> str:
    folders = [p for p in paths if p.is_dir()]
    return f"{plural(len(paths), 'path')}" if len(paths) > 1 or not folders else f"the folder {folders[0]}"


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
