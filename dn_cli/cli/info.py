"""``dn info`` and ``dn models``: what dn makes of a model or an image, and what it supports."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dn_cli.cli.options import Location, debug_option, model_options
from dn_cli.errors import InputError
from dn_cli.geometry import default_margin
from dn_cli.image_io import image_info
from dn_cli.models import families, load_generator
from dn_cli.slides import SlideImage, is_slide
from dn_cli.sources import open_source
from dn_cli.tiff_image import is_ome, is_tiff

MODEL_SUFFIXES = {".pth", ".pt", ".ckpt", ".pkl", ".bin", ".tar"}


def model_info(path: Path, arch: str | None, trust_code: bool) -> dict:
    generator = load_generator(path, arch=arch, trust_code=trust_code)
    return {
        "path": str(path),
        "kind": "model",
        "format": generator.file_format,
        "family": generator.family,
        "params": generator.params,
        "norm_layers": generator.norm_layers,
        "stride": generator.stride,
        "min_input": generator.min_size,
        "out_channels": generator.out_channels,
        "parameters": generator.parameter_count,
        "default_margin_at_512": default_margin(512, generator.stride),
        "notes": generator.notes,
        "warnings": generator.warnings,
    }


def print_record(record: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(record))
        return
    for key, value in record.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = "; ".join(map(str, value)) or "-"
        click.echo(f"{key.replace('_', ' ') + ':':24s}{value}")


@click.command()
@click.argument("path", type=Location())
@model_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@debug_option
def info(*, path: Path, arch: str | None, trust_code: bool, as_json: bool) -> None:
    """Describe PATH: a model (family, parameters, norm layers, stride) or an image (size, levels, µm/px)."""
    if path.is_dir():
        raise InputError(f"{path} is a folder: dn info describes one model, slide or image file")
    if path.suffix.lower() in MODEL_SUFFIXES:
        record = model_info(path, arch, trust_code)
    elif path.exists() and (is_slide(path) or is_tiff(path)):
        with open_source(path) as source:  # what translate reads: OpenSlide's levels, or tifffile's
            if not source.levels:
                return print_record(image_info(path), as_json)
            record = {
                "path": str(path),
                "kind": "slide" if isinstance(source, SlideImage) else "tiff",
                "format": source.vendor or ("ome-tiff" if is_ome(path) else "tiff"),
                "width": source.width,
                "height": source.height,
                "levels": len(source.levels),
                "level_sizes": source.levels,
                "mpp": source.mpp,
            }
    else:
        record = image_info(path)
    print_record(record, as_json)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per family on stdout.")
def models(*, as_json: bool) -> None:
    """List the generator families dn detects and converts."""
    for family in families():
        record = {
            "name": family.name,
            "description": family.description,
            "source": family.source,
            "stride": family.stride or f"2 ** {family.stride_log2}",
        }
        if as_json:
            click.echo(json.dumps(record))
        else:
            click.echo(f"{family.name:16s} {family.description}\n{'':16s} from {family.source}")
