"""The `ctxprobe` command line: a thin click layer over the Python API.

Every user mistake (ValueError, UserError, a missing file, an option click cannot parse)
becomes one line on stderr and exit code 2; Ctrl-C anywhere in a command becomes one line and
exit code 130 (a sweep's own handler says first how many cells are stored). Set
CTXPROBE_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import os
import sys

import click

from ctxprobe.version import __version__


EXIT_BAD_INPUT, EXIT_INTERRUPTED = 2, 130
# click 8.2+: `ctxprobe probes` with no subcommand shows the help through this UsageError.
_SHOWS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class CtxprobeGroup(click.Group):
    def invoke(self, ctx: click.Context):
        debug = bool(os.environ.get("CTXPROBE_DEBUG"))
        try:
            return super().invoke(ctx)
        except _SHOWS_HELP:
            raise
        except click.UsageError as e:  # a bad option value: one line, not click's usage block
            if debug:
                raise
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            _fail(f"{e.format_message()} (see `{where} --help`)")
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except (ValueError, OSError) as e:  # UserError is a ValueError
            if debug:
                raise
            _fail(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        except KeyboardInterrupt:
            if debug:
                raise
            # Every `with` and `finally` on the way up has run (stores closed, temporary files
            # gone); exit at once rather than wait for worker threads still blocked in I/O.
            name = ctx.invoked_subcommand or "command"
            click.echo(f"\ninterrupted: ctxprobe {name} stopped (Ctrl-C); rerun the same command "
                       "to start again", err=True)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


@click.group(cls=CtxprobeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ctxprobe")
def main():
    """ctxprobe: find where a language model's context really stops working.

    Example: ctxprobe probes show niah --length 4k --depth 50
    """


def _register():
    # Each command module adds its commands here, one import per line.
    from ctxprobe.commands.probes import probes  # probes list / show / export
    main.add_command(probes)
    from ctxprobe.commands.run import COMMANDS as run_commands  # run, runs, export, merge
    for command in run_commands:
        main.add_command(command)
    from ctxprobe.commands.bench import bench  # bench
    main.add_command(bench)
    from ctxprobe.commands.inspect import inspect  # inspect
    main.add_command(inspect)
    from ctxprobe.commands.report import report  # report
    main.add_command(report)
    from ctxprobe.commands.compare import COMMANDS as compare_commands  # compare, baseline
    for command in compare_commands:
        main.add_command(command)
    from ctxprobe.commands.history import history  # history
    main.add_command(history)
    from ctxprobe.commands.demo import demo  # demo
    main.add_command(demo)


_register()
