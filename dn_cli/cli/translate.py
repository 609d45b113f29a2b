"""``dn translate``: one image in, its translation out."""

from __future__ import annotations

import json
from pathlib import Path

import click
from tqdm import tqdm

from dn_cli.cli.options import debug_option, model_options, model_path_option
from dn_cli.device import PRECISIONS, autocast_dtype, select_device
from dn_cli.geometry import default_margin
from dn_cli.image_io import TIFF_COMPRESSIONS, check_output, open_sink
from dn_cli.models import load_generator
from dn_cli.pipeline import POLICIES, TileRunner
from dn_cli.pipeline import translate as run_translation
from dn_cli.provenance import provenance, write_sidecar
from dn_cli.sources import open_source


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Output image; the format follows the extension (.png, .jpg, .tif).",
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
    "--tissue/--no-tissue", default=None, help="Skip background tiles (whole-slide images; off for ordinary images)."
)
@click.option(
    "--compression",
    type=click.Choice(TIFF_COMPRESSIONS),
    default="jpeg",
    show_default=True,
    help="Compression of pyramidal TIFF outputs.",
)
@click.option(
    "--quality", type=click.IntRange(1, 100), default=85, show_default=True, help="JPEG / WebP quality of TIFF outputs."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@debug_option
def translate(
    *,
    input_path: Path,
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
    compression: str,
    quality: int,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Translate INPUT with a generator, tile by tile, without tiling artifacts."""
    check_output(output, overwrite)
    torch_device = select_device(device)
    dtype = autocast_dtype(precision, torch_device)
    if level is not None and mpp is not None:
        raise click.UsageError("--level and --mpp choose the same thing: give one")
    source = open_source(input_path, level=level, mpp=mpp, mpp_override=mpp_override)
    try:
        generator = load_generator(model_path, arch=arch, trust_code=trust_code)
        if generator.norm_layers == 0:
            click.echo(f"dn: warning: {model_path.name} has no InstanceNorm layers: DN changes nothing", err=True)
        if tissue:
            click.echo("dn: warning: tissue detection applies to whole-slide images; translating every tile", err=True)
        runner = TileRunner(generator, torch_device, dtype)
        bar = None

        def progress(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:  # created on first use, so errors before any work print no empty bar
                bar = tqdm(total=total, unit="tile", desc=input_path.name, disable=quiet, leave=False)
            bar.update(done - bar.n)

        margin = default_margin(tile_size, generator.stride) if margin is None else margin
        settings = {"norm": policy, "tile_size": tile_size, "margin": margin, "mpp": source.mpp}
        record = provenance(input_path, model_path, generator.family, settings)
        sink = open_sink(
            output,
            source.width,
            source.height,
            mpp=source.mpp,
            compression=compression,
            quality=quality,
            description=json.dumps(record),
        )
        try:
            run_translation(
                source,
                sink,
                runner,
                policy=policy,
                tile_size=tile_size,
                margin=margin,
                batch_size=batch_size,
                progress=progress,
            )
            write_sidecar(output, record)
        finally:
            if bar is not None:
                bar.close()
    finally:
        source.close()
    if not quiet:
        click.echo(f"{input_path} → {output} ({source.width}×{source.height}, --norm {policy})", err=True)
