"""The `ctxprobe` command line: a thin click layer over the Python API.

Every user mistake (ValueError, UserError, a missing file) becomes one line on stderr and
exit code 2; set CTXPROBE_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import os
import sys

import click

from ctxprobe import __version__


class CtxprobeGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except (ValueError, OSError) as e:  # UserError is a ValueError
            if os.environ.get("CTXPROBE_DEBUG"):
                raise
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            click.echo(f"error: {msg}", err=True)
            sys.exit(2)


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
