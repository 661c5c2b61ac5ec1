"""The streaming runner's acceptance benchmark: scout-4l (Llama 4 Scout widths, random bf16 weights)
prefilled layer by layer at 128K and 1M tokens, the 128K run again with the global layer's KV
streamed from pinned host memory (streamed / resident), then the longest prompt of --longest
predicted (from the measured FLOP rate) to finish in the time left.

    python bench/runner.py                      # GPU: scout-4l, bf16, about 8 minutes at most
    python bench/runner.py --lengths 1M --no-host-kv --longest 4M --budget-s 570   # reach for 4M
    python bench/runner.py --preset tiny --lengths 2k,8k --budget-s 60     # CPU smoke run

Each step is guarded (an error is printed and the script goes on) and skipped when its predicted
time does not fit the remaining budget. Prints one line per run and a JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ctxprobe.runner.bench import bench_prefill  # noqa: E402
from ctxprobe.runner.memory import ModelShape, default_budgets, plan_run  # noqa: E402
from ctxprobe.runner.presets import build_preset  # noqa: E402
from ctxprobe.units import parse_tokens  # noqa: E402


def check_paths(device: str, offload_dir: str | None):
    """Step 0, seconds: on this device, in float32, the streamed prefill (every KV tier, hidden states on
    host and disk, weights streamed from host) equals the plain forward, and score equals its reference."""
    import tempfile

    from ctxprobe.runner import Settings, logits, prefill, score, score_reference

    try:
        ids = torch.randint(0, 512, (300,), generator=torch.Generator().manual_seed(0)).tolist()
        for weights in ("resident", "host"):
            m = build_preset("tiny", device=device, dtype="float32", weights=weights)
            want = logits(m, ids).float().cpu()
            with tempfile.TemporaryDirectory(dir=offload_dir) as tmp:
                for kv, hidden in (("device", "host"), ("host", "host"), ("disk", "disk")):
                    settings = Settings(chunk_tokens=37, kv_block_tokens=16, kv_tiers=kv, hidden_tier=hidden,
                                        offload_dir=tmp)
                    got = prefill(m, ids, settings=settings, all_logits=True).logits
                    err = (got - want).abs().max().item()
                    print(f"check: KV {kv:6s} hidden {hidden:4s} weights {m.weight_tier:8s} "
                          f"max |streamed - logits| = {err:.2e} {'ok' if err <= 1e-4 else 'FAILED'}", flush=True)
        branches = [(ids[:3], ids[3:6]), ([], ids[6:8])]
        ok = [(a.greedy, a.first_rank) == (b.greedy, b.first_rank) and abs(a.logprob - b.logprob) < 1e-3
              for a, b in zip(score(m, ids[100:], branches, settings=Settings(chunk_tokens=64, kv_block_tokens=32)),
                              score_reference(m, ids[100:], branches))]
        print(f"check: score == score_reference: {'ok' if all(ok) else 'FAILED'}", flush=True)
    except Exception:
        traceback.print_exc()
        print("check: FAILED with an exception", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=None, help="default: scout-4l on CUDA, tiny on CPU")
    ap.add_argument("--lengths", default=None, help="fixed runs, default 128k,1M (GPU) / 2k,8k (CPU)")
    ap.add_argument("--longest", default="2M,3M,4M,6M,8M,10M",
                    help="candidates for the longest run, tried in order while predicted to fit")
    ap.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget for the whole script")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="default: the card's own dense bf16 peak (ctxprobe/hardware.py); no MFU on a CPU")
    ap.add_argument("--offload-dir", default=None)
    ap.add_argument("--host-kv-length", default=None,
                    help="length of the run with the global layer's KV streamed from pinned host memory "
                         "(default: the first of --lengths)")
    ap.add_argument("--no-host-kv", action="store_true", help="skip the KV-streamed-from-host comparison")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    left = lambda: args.budget_s - (time.perf_counter() - start)  # noqa: E731

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    preset = args.preset or ("scout-4l" if cuda else "tiny")
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    lengths = [parse_tokens(x) for x in (args.lengths or ("128k,1M" if cuda else "2k,8k")).split(",")]
    longest = [parse_tokens(x) for x in args.longest.split(",")] if args.longest else []
    args.host_kv_length = args.host_kv_length or str(lengths[0])
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}; preset {preset}, {dtype}; "
          f"torch {torch.__version__}; budget {args.budget_s:.0f} s", flush=True)

    check_paths(device, args.offload_dir)
    t = time.perf_counter()
    model = build_preset(preset, device=device, dtype=dtype)
    shape = ModelShape.from_config(model.config, model.dtype.itemsize)
    print(f"built {preset} in {time.perf_counter() - t:.1f} s: {shape.weight_bytes / 2**30:.1f} GiB of weights",
          flush=True)
    rate = None   # measured model FLOP/s, to predict the next run's time

    def run(n: int, kv_tier: str | None = None) -> bool:
        nonlocal rate
        predicted = shape.flops(n) / rate if rate else None
        if predicted is not None and predicted * 1.05 + 5 > left():
            print(f"skip {n:,} tokens{' (KV on host)' if kv_tier else ''}: predicted {predicted:.0f} s, "
                  f"{left():.0f} s left", flush=True)
            return False
        try:
            gpu, host = default_budgets(device)
            if gpu is not None:   # what torch holds (weights, cached blocks of earlier runs) is usable too
                gpu += torch.cuda.memory_reserved()
            plan = plan_run(shape, n, device=device, gpu_budget=gpu, host_budget=host, offload_dir=args.offload_dir)
            settings = plan.settings()
            if kv_tier:
                settings.kv_tiers = [kv_tier if lay.kind == "global" else t
                                     for lay, t in zip(shape.layers, plan.kv_tiers)]
            print(plan.describe(), flush=True)
            res = bench_prefill(model, n, settings=settings, peak_tflops=args.peak_tflops)
        except Exception as e:   # report and go on: one failed length must not lose the others
            traceback.print_exc()
            print(f"FAILED {n:,} tokens: {type(e).__name__}: {e}", flush=True)
            if cuda:
                torch.cuda.empty_cache()
            return False
        rate = res.tflops * 1e12
        if cuda and hasattr(torch._C, "_host_emptyCache"):
            torch._C._host_emptyCache()   # give the pinned hidden-state buffer back before a longer run
        tag = f" global-layer KV tier: {kv_tier}" if kv_tier else ""
        print(res.line() + tag, flush=True)
        print("JSON " + json.dumps({**res.to_json(), "preset": preset, "dtype": dtype,
                                    "kv_tier_global": kv_tier or "plan"}), flush=True)
        return True

    for n in lengths:
        run(n)
    if not args.no_host_kv:
        run(parse_tokens(args.host_kv_length), kv_tier="host")
    # The longest candidate predicted to fit; if it fails, the next shorter one that still fits.
    for n in sorted((n for n in longest if n > max(lengths)), reverse=True):
        if rate is not None and shape.flops(n) / rate * 1.05 + 5 > left():
            continue
        if run(n):
            break
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
