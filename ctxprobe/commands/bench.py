"""`ctxprobe bench`: time a layer-by-layer prefill of a checkpoint or a named random-weight preset."""

from __future__ import annotations

import json

import click

from ctxprobe.commands.options import device_option, dtype_option, memory_options, warn_about_budgets


def _config(path, preset):
    from ctxprobe.errors import UserError

    if (path is None) == (preset is None):
        raise UserError("bench: give a checkpoint PATH or --preset NAME (one of them)")
    if preset is not None:
        from ctxprobe.runner.presets import preset_config

        return preset_config(preset)
    from ctxprobe.models.loader import read_config

    return read_config(path)


TIER_ORDER = ("resident", "host", "disk")   # least to most streamed


def _model(path, preset, device, dtype, weights):
    """weights: resident / host (page-locked host memory) / disk (the checkpoint's files), streamed
    to the device one layer ahead of the compute by the runner."""
    if preset is not None:
        from ctxprobe.runner.presets import build_preset

        return build_preset(preset, device=device, dtype=dtype, weights=weights)
    from ctxprobe.runner.load import load_model

    return load_model(path, device=device, dtype=dtype, weights=weights)


def _plans(shape, lengths, preset, weights, **budgets):
    """One plan per length, all before anything is built. A preset has no files, so where the
    planner would read weights from disk it plans them in host memory instead (and says what is short).
    One model serves every length, in the most streamed tier any plan needs (it takes the least
    memory), so every length is planned, described and run with that tier."""
    from ctxprobe.runner.memory import plan_run
    from ctxprobe.units import parse_tokens

    plans = []
    for text in lengths.split(","):
        n = parse_tokens(text.strip())
        plan = plan_run(shape, n, weights=weights, **budgets)
        if preset is not None and plan.weights == "disk":
            on_gpu = budgets["device"].startswith("cuda")
            plan = plan_run(shape, n, weights="host" if on_gpu else "resident", **budgets)
        plans.append(plan)
    tier = max((p.weights for p in plans), key=TIER_ORDER.index)
    return [p if p.weights == tier else plan_run(shape, p.length, weights=tier, **budgets) for p in plans]


@click.command("bench")
@click.argument("path", required=False, type=click.Path())
@click.option("--preset", default=None,
              help="A random-weight shape instead of a checkpoint: tiny, scout-4l, scout-48l, "
                   "gpt-oss-120b-4l, gpt-oss-120b-36l, deepseek-v3-4l, deepseek-v3-61l.")
@click.option("--length", "lengths", default="4k", show_default=True,
              help="Prompt lengths in tokens, comma-separated (128k = 131072, 1M = 1048576).")
@device_option
@dtype_option
@memory_options
@click.option("--chunk", default=None, help="Tokens per prefill step (default: the planner's choice).")
@click.option("--weights", "weights", default=None, type=click.Choice(TIER_ORDER),
              help="Where block weights live: resident on the device, host (page-locked host memory) or disk "
                   "(the checkpoint's files; not for presets), streamed one layer ahead "
                   "(default: the planner's choice).")
@click.option("--peak-tflops", default=None, type=click.FloatRange(min=0, min_open=True),
              help="The device's dense bf16 peak in TFLOP/s, for model FLOP utilisation [default: "
                   "the card's own for H100 (989 SXM, 756 PCIe), H200 and A100; none on a CPU or "
                   "another card, and then no MFU is printed].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per length instead of text.")
def bench(path, preset, lengths, device, dtype, gpu_memory, host_memory, offload_dir, chunk, weights,
          peak_tflops, as_json):
    """Prefill random prompts layer by layer and report tokens/s, model FLOP utilisation against
    the card's peak (--peak-tflops; none on a CPU unless given), peak GPU and host memory and
    host<->GPU traffic. The memory plan is printed first; a run that cannot fit its budgets stops
    there with what is short. --gpu-memory on a machine without a GPU, or --host-memory above
    this machine's memory, gets a warning on stderr.

    Example: ctxprobe bench --preset scout-4l --length 128k,1M --dtype bfloat16
    """
    from ctxprobe.commands.early_checks import check_checkpoint_dir, check_token_list

    if path is not None:   # a wrong path or length is said before torch is imported
        check_checkpoint_dir(path)
    check_token_list(lengths, "--length")
    from ctxprobe.runner.load import pick_device
    from ctxprobe.errors import UserError
    from ctxprobe.models.loader import parse_dtype
    from ctxprobe.runner.bench import bench_prefill
    from ctxprobe.backends.options import MemoryBudgets
    from ctxprobe.runner.memory import ModelShape, default_budgets
    from ctxprobe.units import parse_tokens

    if preset is not None and weights == "disk":
        raise UserError(f"--weights disk reads weights from a checkpoint's files; preset {preset!r} has none: "
                        "use --weights host, or give a checkpoint PATH")
    device = pick_device(device)
    warn_about_budgets(gpu_memory=gpu_memory, host_memory=host_memory, device=device)
    cfg = _config(path, preset)
    shape = ModelShape.from_config(cfg, parse_dtype(dtype or cfg.dtype).itemsize)
    free_gpu, free_host = default_budgets(device)
    gpu, host = MemoryBudgets(gpu_memory, host_memory).parsed()
    # Every length is planned before anything is built: a run that cannot fit stops here.
    plans = _plans(shape, lengths, preset, weights, device=device, gpu_budget=free_gpu if gpu is None else gpu,
                   host_budget=free_host if host is None else host, offload_dir=offload_dir)
    chunk = parse_tokens(chunk, "--chunk") if chunk else None
    model = _model(path, preset, device, dtype, plans[0].weights)   # every plan has the same tier
    for plan in plans:
        settings = plan.settings()
        if chunk:
            settings.chunk_tokens = chunk
        if not as_json:
            click.echo(plan.describe())
        result = bench_prefill(model, plan.length, settings=settings, peak_tflops=peak_tflops)
        click.echo(json.dumps(result.to_json()) if as_json else result.line())
