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
from dn_cli.app.batch import Job, parse_shard
from dn_cli.app.devices import parse_devices
from dn_cli.app.done import dry_run_action
from dn_cli.app.execute import resolved, run_request
from dn_cli.app.model import load_model
from dn_cli.app.request import Request, plan_request, settings_conflict
from dn_cli.app.results import Status
from dn_cli.app.settings import MOMENT_STRIDES, Run, Settings
from dn_cli.cli.options import Location, compile_option, debug_option, model_options, model_path_option
from dn_cli.cli.report import Printed, emit
from dn_cli.cli.streams import is_closed
from dn_cli.device import PRECISIONS, select_device
from dn_cli.errors import DnError, plural
from dn_cli.geometry import MAX_TILE
from dn_cli.image_io import PICTURE_SUFFIXES
from dn_cli.policies import POLICIES
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
    "--moment-stride",
    type=click.Choice(MOMENT_STRIDES),
    default="tile",
    show_default=True,
    help="Where DN measures moments: at every tile, or also halfway between tiles (half: every pixel "
    "within a quarter tile of its moments, 4× the collect forwards; docs/quality.md).",
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
    moment_stride: str,
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
    if conflict := settings_conflict(level, mpp, tissue, tissue_mask):
        raise click.UsageError(conflict)
    if as_json and is_closed("stdout"):
        raise click.UsageError("--json writes to stdout, but stdout is closed")
    if devices_spec is not None and ctx.get_parameter_source("device") == ParameterSource.COMMANDLINE:
        raise click.UsageError("--device and --devices choose the same thing: give one")
    devices = parse_devices(devices_spec) if devices_spec is not None else None  # checked for --dry-run too
    asked = (null, recursive, patterns, output_format, preview, tissue_mask, shard_spec)
    request = request_of(ctx, inputs, output, *asked)
    if not request.jobs:
        click.echo(f"dn: shard {shard_spec} of {plural(request.found, 'input')} is empty: nothing to do", err=True)
        return
    warn_unused_options(ctx, request.jobs, compression)
    if dry_run:
        for job in request.jobs:
            action = dry_run_action(job, overwrite, request.one_file)
            record = {"input": str(job.source), "output": str(job.output), "action": action}
            emit(record, as_json, f"{action}: {job.source} → {job.output}")
        return

    torch_device = select_device(devices[0] if devices else device)
    model = load_model(model_path, arch=arch, trust_code=trust_code)  # checked once, before any worker
    settings = Settings(
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
        compile_model=compile_model,
        moment_stride=moment_stride,
    )
    settings = resolved(settings, model)  # the geometry checked once, before any slide
    if compiled.wanted(compile_model, torch_device) and compile_model == "auto" and not quiet:
        click.echo("dn: compiling the model on first use (--compile off runs it as it is)", err=True)
    events = Printed(as_json=as_json, quiet=quiet, verbose=verbose)
    run = Run(model, settings, started, overwrite=overwrite, fail_fast=fail_fast)
    debug = ctx.meta.get("dn.debug", False)
    results = run_request(request, run, events, device=torch_device, devices=devices, precision=precision, debug=debug)
    events.summary(results)
    if any(result.status == Status.FAILED for result in results):
        ctx.exit(1)


def request_of(
    ctx: click.Context,
    inputs: tuple[Path, ...],
    output: Path,
    null: bool,
    recursive: bool,
    patterns: tuple[str, ...],
    output_format: str,
    preview: Path | None,
    tissue_mask: Path | None,
    shard_spec: str | None,
) -> Request:
    """The jobs the command line asks for (``-`` read from stdin), checked before any work."""
    paths = read_inputs(inputs, null)
    if not paths:
        raise DnError("no inputs: stdin held no paths" if "-" in map(str, inputs) else "no inputs")
    return plan_request(
        paths,
        output,
        recursive=recursive,
        patterns=patterns,
        ome=output_format == "ome-tiff",
        preview=preview,
        tissue_mask=tissue_mask,
        folders=frozenset(ctx.meta.get(Location.FOLDERS, ())),  # given with a trailing slash
        shard_of=parse_shard(shard_spec) if shard_spec else None,
    )


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
