"""Options shared by several subcommands."""

import click


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta["dn.debug"] = True  # meta is shared by the whole context tree


debug_option = click.option(
    "--debug", is_flag=True, expose_value=False, callback=_set_debug, help="Show full tracebacks on errors."
)
