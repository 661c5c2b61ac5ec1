"""Attention checks and throughput: every backend against the reference, resident against
streamed KV, long contexts from host and disk. One script for CPU (--small) and a CUDA card.

    (a) every backend on this device against the float32 reference (masks, GQA, head dims,
        a value head dim unlike the query/key one as DeepSeek-V3's, sinks as gpt-oss's); low
        precision passes when its error is at most 2x that of plain torch math in the same
        dtype, plus 1e-5 (flash-attn's own test rule)
    (b) causal attention of a Scout-shaped layer (40 query heads, 8 KV heads, head dim 128):
        TFLOP/s with KV resident (each kernel; best = resident) and streamed from host memory
    (c) streamed from host at a long length, and from the disk tier

Every check runs in its own try/except and prints FAILED with the reason instead of stopping;
--time-limit bounds the whole run (checks not started in time are skipped, a running one is
interrupted). Usage:
    python bench/attention.py --small                      # CPU, a minute or so
    python bench/attention.py --time-limit 500             # CUDA: 128K resident/streamed, 1M streamed
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import tempfile
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ctxprobe.attention import KVStore, attend, attend_reference, available_backends, chunked_attention  # noqa: E402

SCOUT = dict(Hq=40, Hkv=8, D=128)


class OutOfTime(BaseException):
    """Raised by the alarm. Not an Exception: the per-backend `except Exception` that report a
    failure and go on must not swallow it and run past the time limit."""


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeat=1, warmup=True):
    if warmup:  # kernel selection, allocator
        fn()
        sync(device)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def causal_flops(Tq, Tk, Hq, D, q_start):
    """Multiply-adds x 2 for QK^T and PV over the visible (causal) pairs only."""
    visible = sum_visible(Tq, Tk, q_start)
    return 4 * D * Hq * visible


def sum_visible(Tq, Tk, q_start):
    # query i (absolute q_start + i) sees min(q_start + i + 1, Tk) keys
    full_rows = max(0, min(Tq, Tk - q_start))
    tri = full_rows * q_start + full_rows * (full_rows + 1) // 2
    return tri + (Tq - full_rows) * Tk


def rand(shape, dtype, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(dtype)


# ---------------------------------------------------------------- (a) correctness

# (query/key head dim, value head dim, query heads per KV head, sinks): the plain shapes, then
# DeepSeek-V3's (Dqk 192 = 128 nope + 64 rope, Dv 128; absorbed: 576 = 512 latent + 64, Dv 512)
# and gpt-oss's (64, 8 query heads per KV head, sinks).
SHAPES_A = [(64, 64, 1, False), (64, 64, 5, False), (128, 128, 1, False), (128, 128, 5, False),
            (192, 128, 4, False), (576, 512, 4, False), (64, 64, 8, True)]


def check_a(device, dtype, T):
    masks = {"causal": dict(causal=True), "chunked": dict(chunk_size=T // 3 + 1),
             "window": dict(window=T // 4 + 1), "full": dict(causal=False)}
    backends = [b for b in available_backends(device) if b != "reference"] + ["auto"]
    print(f"(a) backends vs float32 reference on {device.type}, {dtype}, T={T} (queries start mid-sequence)")
    print(f"    {'backend':16} {'mask':8} {'G':>2} {'Dk/Dv':>7} {'sink':>4} {'err out':>10} {'err lse':>10} "
          f"{'limit':>10}  ok")
    failures = 0
    for D, Dv, G, with_sinks in SHAPES_A:
        q = rand((1, 2 * G, T // 2, D), dtype, device, 1)
        k, v = rand((1, 2, T, D), dtype, device, 2), rand((1, 2, T, Dv), dtype, device, 3)
        sinks = rand((2 * G,), torch.float32, device, 4) + math.log(T) if with_sinks else None
        label = f"{G:>2} {f'{D}/{Dv}':>7} {'yes' if with_sinks else 'no':>4}"
        for mask, kw in masks.items():
            kw = dict(kw, q_start=T // 3, sinks=sinks)
            ref_out, ref_lse = attend_reference(q.float(), k.float(), v.float(), **kw)
            if dtype == torch.float32:
                limit = 1e-5
            else:  # the same math in the low-precision dtype sets the bar
                low = _math_in_dtype(q, k, v, kw)
                limit = 2 * (low.float() - ref_out).abs().max().item() + 1e-5
            for backend in backends:
                try:
                    out, lse = attend(q, k, v, backend=backend, **kw)
                    sync(device)
                    fin = torch.isfinite(ref_lse)
                    e_out = (out.float() - ref_out).abs().max().item()
                    e_lse = (lse[fin] - ref_lse[fin]).abs().max().item()
                    ok = e_out <= limit and bool(torch.equal(torch.isneginf(lse), ~fin))
                    failures += not ok
                    print(f"    {backend:16} {mask:8} {label} {e_out:10.2e} {e_lse:10.2e} {limit:10.2e}  "
                          f"{'ok' if ok else 'FAIL'}")
                except Exception as exc:  # noqa: BLE001  (report and go on)
                    failures += 1
                    print(f"    {backend:16} {mask:8} {label} FAILED: {type(exc).__name__}: {exc}"[:200])
    print(f"(a) {'all ok' if failures == 0 else f'{failures} FAILED'}")


def _math_in_dtype(q, k, v, kw):
    """Plain torch math with scores and products in q's dtype (softmax in float32, over the
    scores and the sink's logit when there are sinks, whose column is then dropped)."""
    from ctxprobe.attention.reference import visible
    Tq, Tk, D = q.shape[2], k.shape[2], q.shape[3]
    q_start = kw.get("q_start", Tk - Tq)
    mask = visible(torch.arange(q_start, q_start + Tq, device=q.device), torch.arange(Tk, device=q.device),
                   kw.get("causal", True), kw.get("chunk_size"), kw.get("window"))
    G = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    s = ((q @ kk.transpose(-1, -2)) * (1 / math.sqrt(D))).float().masked_fill(~mask, float("-inf"))
    sinks = kw.get("sinks")
    if sinks is not None:
        s = torch.cat([s, sinks.float().view(1, -1, 1, 1).expand(*s.shape[:3], 1)], dim=-1)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)[..., :Tk].to(q.dtype)
    return p @ vv


# ---------------------------------------------------------------- (b), (c) throughput

def resident(device, dtype, T, backends, repeat):
    Hq, Hkv, D = SCOUT["Hq"], SCOUT["Hkv"], SCOUT["D"]
    q = rand((1, Hq, T, D), dtype, device, 1)
    k, v = rand((1, Hkv, T, D), dtype, device, 2), rand((1, Hkv, T, D), dtype, device, 3)
    flops = causal_flops(T, T, Hq, D, 0)
    best = (None, 0.0)
    for backend in backends:
        try:
            secs = timed(lambda: attend(q, k, v, backend=backend), device, repeat)
            tf = flops / secs / 1e12
            print(f"    resident  {backend:16} T={T:>8}  {secs * 1e3:9.1f} ms  {tf:8.2f} TFLOP/s")
            if tf > best[1]:
                best = (backend, tf)
        except Exception as exc:  # noqa: BLE001
            print(f"    resident  {backend:16} T={T:>8}  FAILED: {type(exc).__name__}: {exc}"[:200])
    del q, k, v
    return best


def streamed(device, dtype, T, tier, *, block_size, q_chunk, backend, repeat, disk_dir=None, fp8=False,
             warmup=True):
    Hq, Hkv, D = SCOUT["Hq"], SCOUT["Hkv"], SCOUT["D"]
    store = KVStore(Hkv, D, tier=tier, block_size=block_size, dtype=dtype, device=device, path=disk_dir, fp8=fp8)
    try:
        for s in range(0, T, block_size):  # fill block by block so host memory holds only the store
            n = min(block_size, T - s)
            store.append(rand((1, Hkv, n, D), dtype, device, 10 + s).cpu(), rand((1, Hkv, n, D), dtype, device, 11 + s).cpu())
        out = torch.empty(1, Hq, q_chunk, D, dtype=dtype, device=device)

        def run():
            for q0 in range(0, T, q_chunk):
                n = min(q_chunk, T - q0)
                qc = rand((1, Hq, n, D), dtype, device, 1) if n != q_chunk else qbuf
                o, _ = chunked_attention(qc, store, q_start=q0, backend=backend)
                out[:, :, :n].copy_(o)

        qbuf = rand((1, Hq, q_chunk, D), dtype, device, 1)
        secs = timed(run, device, repeat, warmup)
        tf = causal_flops(T, T, Hq, D, 0) / secs / 1e12
        label = f"streamed  {tier + (' fp8' if fp8 else ''):16}"
        print(f"    {label} T={T:>8}  {secs * 1e3:9.1f} ms  {tf:8.2f} TFLOP/s  "
              f"(block {block_size}, q chunk {q_chunk}, {store.block_bytes * store.n_blocks / 2**30:.2f} GiB KV)")
        return tf
    finally:
        store.close()


def check_b(device, dtype, T, args):
    print(f"(b) Scout-shaped causal layer ({SCOUT}), {dtype}, T={T}")
    backends = [b for b in available_backends(device) if b not in ("reference", "torch")] if device.type == "cuda" \
        else ["torch", "reference"]
    name, best = resident(device, dtype, T, backends, args.repeat)
    print(f"    best resident: {name} {best:.2f} TFLOP/s")
    tf = streamed(device, dtype, T, "host", block_size=args.block_size, q_chunk=args.q_chunk, backend=name or "auto",
                  repeat=args.repeat)
    if best:
        print(f"(b) streamed / resident = {tf / best:.3f} (goal >= 0.9)")


def check_c(device, dtype, lengths, disk_T, args):
    print(f"(c) streamed from host at long lengths, and from disk; {dtype}")
    for T in lengths:
        streamed(device, dtype, T, "host", block_size=args.block_size, q_chunk=args.q_chunk, backend="auto", repeat=1,
                 warmup=False)
    with tempfile.TemporaryDirectory(dir=args.disk_dir) as d:
        streamed(device, dtype, disk_T, "disk", block_size=args.block_size, q_chunk=args.q_chunk, backend="auto",
                 repeat=1, disk_dir=d, warmup=False)
        streamed(device, dtype, disk_T, "disk", block_size=args.block_size, q_chunk=args.q_chunk, backend="auto",
                 repeat=1, disk_dir=d, fp8=True, warmup=False)


# ---------------------------------------------------------------- driver

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="small sizes (CPU, or a quick GPU smoke run)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--checks", default="a,b,c", help="which checks to run, e.g. a,b")
    p.add_argument("--time-limit", type=float, default=540.0, help="seconds for the whole run")
    p.add_argument("--length", type=int, default=None, help="(b) length (default 131072; --small 2048)")
    p.add_argument("--long", default=None, help="(c) host lengths, comma-separated (default 1048576)")
    p.add_argument("--disk-length", type=int, default=None, help="(c) disk tier length (default 262144)")
    p.add_argument("--disk-dir", default=None, help="where the disk tier's file goes (default: temp dir)")
    p.add_argument("--block-size", type=int, default=None, help="KV block (default 65536; --small 1024)")
    p.add_argument("--q-chunk", type=int, default=None, help="query chunk (default 65536; --small 1024)")
    p.add_argument("--repeat", type=int, default=2, help="timed repeats for (b), best kept")
    args = p.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    small = args.small
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    args.length = args.length or (2048 if small else 131072)
    longs = [int(x) for x in args.long.split(",")] if args.long else ([4096] if small else [1048576])
    disk_T = args.disk_length or (4096 if small else 262144)
    args.block_size = args.block_size or (1024 if small else 65536)
    args.q_chunk = args.q_chunk or (1024 if small else 65536)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {name}; torch {torch.__version__}; command: {' '.join(sys.argv)}")

    deadline = time.monotonic() + args.time_limit

    def alarm(*_):
        raise OutOfTime(f"time limit of {args.time_limit:.0f} s reached")

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(max(1, int(args.time_limit)))
    checks = {
        "a": lambda: check_a(device, dtype, 384 if small else 4096),
        "b": lambda: check_b(device, dtype, args.length, args),
        "c": lambda: check_c(device, dtype, longs, disk_T, args),
    }
    for key in args.checks.split(","):
        if time.monotonic() >= deadline:
            print(f"({key}) SKIPPED: out of time")
            continue
        t = time.monotonic()
        try:
            checks[key]()
        except OutOfTime as exc:
            print(f"({key}) INTERRUPTED: {exc}")
        except Exception as exc:  # noqa: BLE001
            print(f"({key}) FAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc(limit=3)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(f"({key}) took {time.monotonic() - t:.1f} s")
    signal.alarm(0)


if __name__ == "__main__":
    main()
