"""Options shared by several subcommands."""

import os
from pathlib import Path

import click

from dn_cli import compiled
from dn_cli.models import DEMO_MODEL, families


class Location(click.Path):
    """A path that is not empty (``"$UNSET"`` must not mean the current folder). One given with a
    trailing slash is a folder whatever its name (``-o slides.tif/``): noted in ``ctx.meta``, as
    ``Path`` drops the slash."""

    FOLDERS = "dn.folders"

    def __init__(self) -> None:
        super().__init__(path_type=Path)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("is empty (an unset variable?): give a path, or . for the current folder", param, ctx)
        if isinstance(value, str) and value.endswith(os.sep) and ctx is not None and param is not None:
            ctx.meta.setdefault(self.FOLDERS, set()).add(param.name)
        return super().convert(value, param, ctx)


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta["dn.debug"] = True  # meta is shared by the whole context tree


debug_option = click.option(
    "--debug", is_flag=True, expose_value=False, callback=_set_debug, help="Show full tracebacks on errors."
)


def compile_option(default: str, help: str):
    """``--compile auto|on|off``, passed on as ``compile_model``."""
    return click.option(
        "--compile", "compile_model", type=click.Choice(compiled.CHOICES), default=default, show_default=True, help=help
    )


def model_options(command):
    """--arch and --trust-model-code, for every command that loads a model."""
    command = click.option(
        "--trust-model-code",
        "trust_code",
        is_flag=True,
        help="Allow pickled whole-model files (loading them can run arbitrary code).",
    )(command)
    return click.option(
        "--arch",
        type=click.Choice([f.name for f in families()]),
        default=None,
        help="Force the generator family instead of detecting it from the weights.",
    )(command)


model_path_option = click.option(
    "--model",
    "model_path",
    type=Location(),
    default=DEMO_MODEL,
    show_default="the bundled demo model",
    help="Generator checkpoint: state dict, training checkpoint or TorchScript.",
)
