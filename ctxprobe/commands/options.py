"""Options shared by several commands, as click decorators (one definition, one help text).

A group of options that becomes one piece of the Python API has a builder beside it that reads
the group's values from a command's parameters: grid_options -> grid_from (a Grid),
native_options -> native_from (NativeOptions), server_options -> server_from (ServerOptions).
"""

from __future__ import annotations

import click

from ctxprobe.store import DEFAULT_PATH


def _apply(command, options):
    for option in reversed(options):
        command = option(command)
    return command


db_option = click.option("--db", "db", default=DEFAULT_PATH, show_default=True,
                         type=click.Path(dir_okay=False), help="The SQLite results database.")

device_option = click.option("--device", default=None,
                             help="Torch device of the native runner, e.g. cuda, cuda:1 or cpu "
                                  "[default: cuda when available].")
dtype_option = click.option("--dtype", default=None,
                            help="Weight and KV dtype, e.g. bfloat16 or float32 [default: the "
                                 "checkpoint's, or the preset's].")


def memory_options(command):
    """--gpu-memory, --host-memory, --offload-dir: the budgets the native runner's memory plan
    must fit (ctxprobe/runner/memory.py). Each is passed on as given (a size string or None)."""
    return _apply(command, [
        click.option("--gpu-memory", default=None,
                     help="GPU memory budget per device, e.g. 78GiB [default: what is free]."),
        click.option("--host-memory", default=None,
                     help="Host memory budget per process, e.g. 120GiB [default: what is available, "
                          "split among torchrun's processes on this machine]."),
        click.option("--offload-dir", default=None, type=click.Path(file_okay=False),
                     help="Directory for the disk tier (hidden states, KV) when host memory is short."),
    ])


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


def grid_options(command):
    """What a sweep asks: --probe, --lengths, --depths, --param, --samples, --seed, --haystack,
    --shard, --verify (grid_from reads them)."""
    return _apply(command, [
        click.option("--probe", "probes", required=True, help="Probe families, comma-separated."),
        click.option("--lengths", required=True,
                     help="Context lengths in tokens: a list 1k,4k,16k (k = 1024, M = 1048576; exact "
                          "integers too) or a geometric range 1k..128k:x2."),
        click.option("--depths", default="50", show_default=True,
                     help="Needle depths in %: a list 0,50,100 or a linear range 0..100:11."),
        click.option("--param", "params", multiple=True, metavar="FAMILY.NAME=VALUE",
                     help="A probe family's parameter (see `ctxprobe probes list`), e.g. "
                          "multikey.value_kind=uuid; NAME=VALUE sets it for every --probe family that "
                          "has it. Repeatable. Part of the run's settings: other values make another run."),
        click.option("--samples", default=1, show_default=True, type=int, help="Samples per cell."),
        click.option("--seed", default=0, show_default=True, type=int,
                     help="Seed of the haystacks and needles."),
        click.option("--haystack", default=None,
                     help="'noise', or a .txt file or a directory of them [default: seeded prose]."),
        click.option("--shard", default=None, help="Run only the i-th of n shares of the cells, e.g. 0/4."),
        verify_option,
    ])


def grid_from(params: dict):
    """The Grid that grid_options' values ask for (UserError naming a bad one)."""
    from ctxprobe.sweep import Grid

    return Grid.parse(params["probes"], params["lengths"], params["depths"], samples=params["samples"],
                      seed=params["seed"], haystack=params["haystack"], params=params["params"],
                      shard=params["shard"], verify=params["verify"])


def native_options(command):
    """The native runner's: --chat-template, --device, --dtype, --generate-failing, --threads, the
    memory budgets and --router-trace (native_from reads them)."""
    return _apply(command, [
        click.option("--chat-template/--no-chat-template", default=True, show_default=True,
                     help="Native: wrap probes in the checkpoint's chat template when it has one."),
        device_option,
        dtype_option,
        click.option("--generate-failing", default=32, show_default=True, type=click.IntRange(min=0),
                     help="Native: for a teacher-forced cell that fails, also generate greedily up to "
                          "this many tokens and store it as the cell's `generation` (what the model "
                          "really writes, decoded on from the scored pass); 0: off."),
        threads_option,
        memory_options,
        click.option("--router-trace", is_flag=True,
                     help="Native MoE models: record, per MoE layer and log-spaced prompt position, the "
                          "experts each cell's prompt chose and the router's top-1 margin; `ctxprobe "
                          "report` plots them."),
    ])


def native_from(params: dict):
    from ctxprobe.backends.options import NativeOptions

    return NativeOptions(device=params["device"], dtype=params["dtype"], chat_template=params["chat_template"],
                         gpu_memory=params["gpu_memory"], host_memory=params["host_memory"],
                         offload_dir=params["offload_dir"], threads=params["threads"],
                         generate_failing=params["generate_failing"], router_trace=params["router_trace"])


def server_options(command):
    """An OpenAI-compatible server's: --served-model, --api, --api-key-env, --tokenizer, --timeout,
    --max-response-bytes, --retries, --concurrency, --stream, --reasoning-budget (server_from)."""
    return _apply(command, [
        click.option("--served-model", default=None, help="openai: the model name the server knows."),
        click.option("--api", type=click.Choice(["chat", "completions"]), default="chat", show_default=True,
                     help="openai: which endpoint to call."),
        click.option("--api-key-env", default=None,
                     help="openai: environment variable holding the API key [default: OPENAI_API_KEY "
                          "if set]."),
        click.option("--tokenizer", default=None, callback=builtin_tokenizer,
                     help="openai: tokenizer.json (or its directory, or builtin: the built-in model's) "
                          "to count lengths when the server has no /tokenize."),
        click.option("--timeout", default=120.0, show_default=True, type=SECONDS,
                     help="openai: seconds a whole request may take (connect, send, wait, read) before "
                          "it is retried."),
        click.option("--max-response-bytes", default=1 << 20, show_default=True, type=int,
                     help="openai: a reply body larger than this is not read; its cell is stored as errored."),
        click.option("--retries", default=5, show_default=True, type=int,
                     help="openai: retries on 429, 5xx and timeouts."),
        click.option("--concurrency", default=4, show_default=True, type=int,
                     help="openai: requests in flight at once."),
        click.option("--stream", is_flag=True,
                     help="openai: stream each answer (server-sent events) and store its time to first "
                          "token, output tokens and decode rate beside the total time."),
        click.option("--reasoning-budget", default=0, show_default=True, type=click.IntRange(min=0),
                     help="openai: tokens a thinking model may spend on reasoning before its answer, "
                          "added to --max-new-tokens in each request (see docs/serving.md for sizes)."),
    ])


def server_from(params: dict):
    from ctxprobe.backends.options import ServerOptions

    return ServerOptions(served_model=params["served_model"], api=params["api"],
                         api_key_env=params["api_key_env"], tokenizer=params["tokenizer"],
                         timeout=params["timeout"], retries=params["retries"],
                         concurrency=params["concurrency"], max_response_bytes=params["max_response_bytes"],
                         stream=params["stream"], reasoning_budget=params["reasoning_budget"])
