"""``dn bench``: how fast each stage runs on this machine, and which one sets the pace."""

from __future__ import annotations

import importlib.resources
import json
import tempfile
from pathlib import Path

import click
import torch

from dn_cli import compiled
from dn_cli.app.execute import make_runner, resolved
from dn_cli.app.model import load_model
from dn_cli.app.settings import Settings
from dn_cli.benchmark import measure
from dn_cli.cli.options import Location, compile_option, debug_option, model_options, model_path_option
from dn_cli.cli.report import Printed
from dn_cli.device import PRECISIONS, select_device
from dn_cli.geometry import MAX_TILE
from dn_cli.image_io import write_test_slide
from dn_cli.sources import open_source

QUICK_SIZE = 1024
COMPILED_KEYS = ("ceiling_mpx_s", "in_mpx_s", "dn_mpx_s")  # what torch.compile changes
LABELS = {
    "read": "slide reads alone",
    "ceiling": "model alone (ceiling)",
    "write": "writer alone (JPEG pyramid)",
    "null": "pipeline without the model",
    "in": "pipeline, --norm in",
    "dn": "pipeline, --norm dn",
}


@click.command()
@click.argument("slide", required=False, type=Location())
@model_path_option
@model_options
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True)
@compile_option("off", "Also measure the model through torch.compile (auto: on CUDA), beside the eager figures.")
@click.option("--batch-size", type=click.IntRange(1, 512), default=4, show_default=True)
@click.option("--tile-size", type=click.IntRange(8, MAX_TILE), default=512, show_default=True)
@click.option(
    "--size",
    type=click.IntRange(256, 65536),
    default=4096,
    show_default=True,
    help="Side of the tissue slide made when none is given.",
)
@click.option("--repeats", type=click.IntRange(1, 20), default=3, show_default=True, help="Measurements of each stage.")
@click.option(
    "--quick",
    is_flag=True,
    help=f"A {QUICK_SIZE}² slide, each stage measured once: a rough figure in about a minute on a CPU "
    "(the default takes about 11 minutes there).",
)
@click.option(
    "--host-only",
    is_flag=True,
    help="Only the stages without the model (reads, writer, the pipeline with a pass-through): "
    "what this host can feed a GPU.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@debug_option
def bench(
    *,
    slide: Path | None,
    model_path: Path,
    arch: str | None,
    trust_code: bool,
    device: str,
    precision: str,
    compile_model: str,
    batch_size: int,
    tile_size: int,
    size: int,
    repeats: int,
    quick: bool,
    host_only: bool,
    as_json: bool,
) -> None:
    """Measure reads, model, writer and the whole pipeline on SLIDE (default: a slide of real tissue
    made from the bundled sample), in megapixels per second, and name the bottleneck."""
    if quick:
        size, repeats = min(size, QUICK_SIZE), 1
    torch_device = select_device(device)
    model = load_model(model_path, arch=arch, trust_code=trust_code)
    settings = resolved(Settings(tile_size=tile_size, batch_size=batch_size), model)
    events = Printed()
    runner = make_runner(model, torch_device, precision, "off", events)
    with tempfile.TemporaryDirectory() as tmp:
        described = str(slide)
        if slide is None:
            slide, described = Path(tmp) / "tissue.tif", f"{size}² made of the bundled sample slide"
            write_test_slide(slide, Path(str(importlib.resources.files("dn_cli.examples") / "sample_ihc.tif")), size)
        with open_source(slide) as source:
            options = {"tile_size": tile_size, "margin": settings.margin, "batch_size": batch_size}
            options |= {"repeats": repeats, "host_only": host_only}
            say = None if as_json else lambda stage: click.echo(f"  measuring {stage}…", err=True)
            report = measure(source, runner, **options, progress=say)
            if compiled.wanted(compile_model, torch_device) and not host_only:
                fast = make_runner(model, torch_device, precision, "on", events)
                again = measure(source, fast, **options, progress=say and (lambda stage: say(f"{stage}, compiled")))
                report["compiled"] = {key: again[key] for key in COMPILED_KEYS} | {"compiled": fast.compiled}
    report |= {"device": device_name(torch_device), "model": model.loaded().name, "slide": described}
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"{report['device']}, {report['model']}, {report['slide']}: {report['megapixels']} Mpx measured")
    for key, label in ((k, v) for k, v in LABELS.items() if f"{k}_mpx_s" in report):
        low, high = report["spread"][f"{key}_mpx_s"]
        click.echo(f"  {label:30s} {report[f'{key}_mpx_s']:9.2f} Mpx/s  ({low:.2f}–{high:.2f})")
    for key in COMPILED_KEYS if "compiled" in report else ():
        click.echo(f"  {LABELS[key.removesuffix('_mpx_s')] + ', compiled':30s} {report['compiled'][key]:9.2f} Mpx/s")
    click.echo(f"bottleneck: {report['bottleneck']}")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
