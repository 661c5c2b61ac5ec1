"""`ctxprobe inspect PATH`: what a checkpoint is and what a context length will cost."""

from __future__ import annotations

import json

import click

from ctxprobe.commands.options import dtype_option, memory_options, warn_about_budgets
from ctxprobe.units import parse_tokens


@click.command("inspect")
@click.argument("path", type=click.Path())
@click.option("--length", default=None, help="Context length in tokens (4k = 4096) to size memory for.")
@dtype_option
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
@memory_options
def inspect(path, length, dtype, as_json, gpu_memory, host_memory, offload_dir):
    """Architecture, parameters (total and active), layers by kind, KV bytes per token and,
    with --length, the memory each tier needs. Reads headers only; checks every key and shape.
    Planning for another machine is allowed: --gpu-memory on a machine without a GPU, or
    --host-memory above this machine's memory, plans as asked with a warning on stderr.

    Example: ctxprobe inspect ./Llama-4-Scout-17B-16E-Instruct --length 1M
    """
    from ctxprobe.commands.early_checks import check_checkpoint_dir
    from ctxprobe.errors import UserError

    if not length and (gpu_memory or host_memory or offload_dir):
        raise UserError("--gpu-memory, --host-memory and --offload-dir plan for a length: add --length, e.g. --length 1M")
    check_checkpoint_dir(path)   # a wrong path or length is said before torch is imported
    tokens = parse_tokens(length, "--length") if length else None
    from ctxprobe.models.inspect import describe, format_facts

    facts = describe(path, length=tokens, dtype=dtype)
    if tokens:   # the streaming runner's memory plan (ctxprobe/runner/memory.py)
        warn_about_budgets(gpu_memory=gpu_memory, host_memory=host_memory, device=None)
        import torch

        from ctxprobe.backends.options import MemoryBudgets
        from ctxprobe.runner.memory import default_budgets, plan_for_checkpoint

        gpu, host = MemoryBudgets(gpu_memory, host_memory).parsed()
        host = default_budgets("cpu")[1] if host is None else host
        if gpu is None and torch.cuda.is_available():   # plan for what is free, as `run` does
            gpu = default_budgets("cuda")[0]
        facts["plan"] = plan_for_checkpoint(path, tokens, dtype=dtype, gpu_budget=gpu, host_budget=host,
                                            offload_dir=offload_dir).describe()
    click.echo(json.dumps(facts, indent=2) if as_json
               else format_facts(facts) + ("\n" + facts["plan"] if "plan" in facts else ""))


COMMANDS = [inspect]
