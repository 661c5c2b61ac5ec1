"""Options shared by several commands, as click decorators (one definition, one help text)."""

from __future__ import annotations

import click


def memory_options(command):
    """--gpu-memory, --host-memory, --offload-dir: the budgets the native runner's memory plan
    must fit (ctxprobe/runner/planner.py). Each is passed on as given (a size string or None)."""
    for option in reversed([
        click.option("--gpu-memory", default=None,
                     help="GPU memory budget per device, e.g. 78GiB [default: what is free]."),
        click.option("--host-memory", default=None,
                     help="Host memory budget per process, e.g. 120GiB [default: what is available, "
                          "split among torchrun's processes on this machine]."),
        click.option("--offload-dir", default=None, type=click.Path(file_okay=False),
                     help="Directory for the disk tier (hidden states, KV) when host memory is short."),
    ]):
        command = option(command)
    return command


def builtin_tokenizer(ctx, param, value):
    """--tokenizer: 'builtin' names the built-in model's tokenizer, as --model builtin names the
    model (unless a file or directory of that name is here)."""
    import os

    if value == "builtin" and not os.path.exists(value):
        from ctxprobe.builtin import MODEL_DIR

        return str(MODEL_DIR)
    return value


def warn_about_budgets(*, gpu_memory, host_memory, device) -> None:
    """One 'warning:' line on stderr per budget this machine cannot back (ctxprobe/runner/machine.py):
    --gpu-memory without a GPU to run on, --host-memory above the machine's memory."""
    if gpu_memory is None and host_memory is None:
        return
    from ctxprobe.runner.machine import budget_warnings

    for line in budget_warnings(gpu_memory=gpu_memory, host_memory=host_memory, device=device):
        click.echo(f"warning: {line}", err=True)


VERIFY_MODES = ("sampled", "pairs", "full", "junctions")   # probes/exactness.py's MODES

verify_option = click.option(
    "--verify", type=click.Choice(VERIFY_MODES), default="sampled", show_default=True,
    help="How each prompt is proven to re-tokenize to its ids: sampled (every pair of adjacent "
         "pieces, then a few windows in context), pairs, full (the whole prompt re-tokenized: "
         "the audit), junctions (fastest; not a proof). See docs/probes.md.")

threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="Native: torch's CPU threads per pass [default: the cores of this process's affinity "
         "mask that other processes leave free, decided again every few seconds; README, "
         "'CPU threads'].")


MAX_SECONDS = 86400.0   # a day: longer is a typo, and socket timeouts overflow near 1e10 s


class Seconds(click.ParamType):
    """A finite number of seconds in (0, MAX_SECONDS]: inf and nan would reach the socket layer
    (an OverflowError there, or a request that may never end)."""

    name = "seconds"

    def convert(self, value, param, ctx):
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds, e.g. 120", param, ctx)
        if not (seconds > 0 and seconds <= MAX_SECONDS):   # False for nan too
            self.fail(f"{value!r} is not a number of seconds above 0 and at most "
                      f"{MAX_SECONDS:.0f} (a day)", param, ctx)
        return seconds


SECONDS = Seconds()
