"""The ``dn`` command: a Click group whose errors reach the user as one line on stderr."""

from __future__ import annotations

import sys
import threading
from contextlib import nullcontext

import click

from dn_cli import __version__  # first: it turns huge pages on before torch allocates
from dn_cli.cli.bench import bench
from dn_cli.cli.info import info, models
from dn_cli.cli.options import debug_option
from dn_cli.cli.streams import guard_streams
from dn_cli.cli.translate import translate
from dn_cli.errors import DnError, first_line
from dn_cli.stopping import stopped_by_signals


class DnGroup(click.Group):
    """Turns every error into ``dn: error: ...`` and an exit status, tracebacks only with --debug."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        debug = False

        def run(ctx_args):
            nonlocal debug
            with self.make_context(prog_name or "dn", ctx_args, **extra) as ctx:
                try:
                    return self.invoke(ctx)
                finally:
                    debug = ctx.meta.get("dn.debug", False)

        args = sys.argv[1:] if args is None else list(args)
        # `kill` (SIGTERM) unwinds like Ctrl-C, so partial outputs are removed on the way out.
        signals = stopped_by_signals() if threading.current_thread() is threading.main_thread() else nullcontext()
        try:
            with signals:
                run(args)
            code = 0
        except click.exceptions.Exit as e:
            code = e.exit_code
        except click.ClickException as e:
            click.echo(f"dn: error: {e.format_message()}", err=True)
            code = e.exit_code
        except (KeyboardInterrupt, click.Abort):
            click.echo("dn: interrupted", err=True)
            code = 130
        except DnError as e:
            if debug:
                raise
            click.echo(f"dn: error: {e}", err=True)
            code = 1
        except Exception as e:
            if debug:
                raise
            click.echo(f"dn: error: unexpected {type(e).__name__}: {first_line(e)} (rerun with --debug)", err=True)
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code


@click.group(cls=DnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dn")
@debug_option
def cli() -> None:
    """Translate gigapixel images tile by tile with Dense Normalization."""


cli.add_command(translate)
cli.add_command(info)
cli.add_command(models)
cli.add_command(bench)


def main() -> None:
    guard_streams()  # a closed stdout or stderr must not cost a slide
    cli()
