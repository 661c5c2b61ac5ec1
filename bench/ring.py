"""Ring attention against plain `attend`: overhead on one rank, speed-up on several.

Spawns --world-size processes in a process group (NCCL when each rank can have its own GPU,
else gloo on CPU), times `ring_attend` on each rank's shard, and times plain `attend` over the
whole sequence in one process. With one rank the ring has no transfers and one attend call,
so the figure is the cost of the ring wrapper itself. Checks that the outputs agree.

    python bench/ring.py                                   # CPU, small
    python bench/ring.py --seq-len 131072 --heads 40 --kv-heads 8 --head-dim 128 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ctxprobe.attention import attend, ring_attend, shard  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world-size", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--layout", default="zigzag", choices=["zigzag", "contiguous"])
    p.add_argument("--chunk-size", type=int, default=None, help="chunked-local mask (default: global causal)")
    p.add_argument("--align", type=int, default=1, help="put shard boundaries on multiples of this")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backend", default=None, help="gloo or nccl (default: nccl if enough GPUs, else gloo)")
    return p.parse_args(argv)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def inputs(args, device):
    """The full q, k, v, the same on every rank (same seed); drawn on the device, since 128K x 40
    heads of float32 normal numbers take seconds of CPU time per rank."""
    g = torch.Generator(device=device).manual_seed(0)
    dtype = getattr(torch, args.dtype)
    T, D = args.seq_len, args.head_dim
    shapes = [(1, args.heads, T, D), (1, args.kv_heads, T, D), (1, args.kv_heads, T, D)]
    return [torch.randn(s, generator=g, device=device).to(dtype) for s in shapes]


def causal_flops(args) -> float:
    """4 D FLOPs per visible (query, key) pair and query head."""
    def triangle(n):
        return n * (n + 1) / 2

    if args.chunk_size is None:
        pairs = triangle(args.seq_len)
    else:
        full, rest = divmod(args.seq_len, args.chunk_size)
        pairs = full * triangle(args.chunk_size) + triangle(rest)
    return 4 * args.head_dim * args.heads * pairs


def worker(rank: int, args, port: int, backend: str) -> None:
    threads = max(1, (os.cpu_count() or 1) // args.world_size)
    torch.set_num_threads(threads)
    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=args.world_size, timeout=datetime.timedelta(minutes=5))
    q, k, v = inputs(args, device)
    mask = dict(causal=True, chunk_size=args.chunk_size)
    local = [shard(t, rank, args.world_size, args.layout, align=args.align).contiguous() for t in (q, k, v)]

    def run_ring():  # start together, and count until the slowest rank is done
        dist.barrier()
        result = ring_attend(*local, layout=args.layout, seq_len=args.seq_len, align=args.align, **mask)
        dist.barrier()
        return result

    def run_plain():  # rank 0 alone, with every CPU core, while the others wait at the barrier
        if rank == 0:
            torch.set_num_threads(os.cpu_count() or 1)
            attend(q, k, v, **mask)
            torch.set_num_threads(threads)
        dist.barrier()

    # Alternate the two so that load from other processes hits both alike; keep the best of each.
    run_ring(), run_plain()  # warm-up: kernel selection, allocator, first NCCL connection
    ring_s = plain_s = float("inf")
    for _ in range(args.repeats):
        ring_s = min(ring_s, seconds(run_ring, device))
        plain_s = min(plain_s, seconds(run_plain, device))
    out, _ = run_ring()
    if rank == 0:
        ref, _ = attend(q, k, v, **mask)
        want = shard(ref, 0, args.world_size, args.layout, align=args.align)
        diff = (out.float() - want.float()).abs().max().item()
        tflops = causal_flops(args) / 1e12
        cpu = f"CPU ({os.cpu_count()} cores)"
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
        print(f"device {name}, backend {backend}, world {args.world_size}, layout {args.layout}, "
              f"T {args.seq_len}, heads {args.heads}/{args.kv_heads} x {args.head_dim}, {args.dtype}, "
              f"mask {'chunk ' + str(args.chunk_size) if args.chunk_size else 'causal'}")
        print(f"  attend (1 process)   {plain_s * 1e3:10.2f} ms  {tflops / plain_s:8.3f} TFLOP/s")
        print(f"  ring_attend          {ring_s * 1e3:10.2f} ms  {tflops / ring_s:8.3f} TFLOP/s")
        if args.world_size == 1:
            print(f"  ring overhead        {(ring_s / plain_s - 1) * 100:+9.1f} %")
        else:
            print(f"  speed-up             {plain_s / ring_s:10.2f} x  (ideal {args.world_size})")
        print(f"  max |ring - attend|  {diff:.2e}")
    dist.barrier()
    dist.destroy_process_group()


def main(argv=None):
    args = parse_args(argv)
    backend = args.backend or ("nccl" if torch.cuda.device_count() >= args.world_size else "gloo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(args, port, backend), nprocs=args.world_size, join=True)


if __name__ == "__main__":
    main()
