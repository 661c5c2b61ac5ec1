"""Helpers for tests that start real processes: free loopback ports, spawned gloo worlds."""

from __future__ import annotations

import json
import os
import socket

import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finish_rank(out_dir: str, rank: int, results: dict) -> None:
    """A worker's last step, also after a failure (call it in `finally`): hand its results to
    spawn_world, leave the group, and end the process.

    The process ends with os._exit, skipping the interpreter's C++ teardown: gloo sometimes
    aborts there ("terminate called without an active exception", SIGABRT) after every result
    is written, which made spawn_world fail at random on a loaded machine. An exception on its
    way out is kept: its traceback goes into the results and the exit status is 1."""
    import sys
    import traceback

    import torch.distributed as dist

    failed = sys.exc_info()[1] is not None
    if failed:
        results = dict(results, worker_error=results.get("worker_error") or traceback.format_exc())
    status = 1 if failed else 0
    try:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
        dist.destroy_process_group()
    except BaseException:
        traceback.print_exc()
        status = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def spawn_world(worker, world_size: int, out_dir: str, *args) -> list[dict]:
    """Run worker(rank, world_size, port, out_dir, *args) on world_size processes; each rank
    writes out_dir/rank{r}.json, and the per-rank dicts come back in rank order."""
    mp.spawn(worker, args=(world_size, free_port(), out_dir, *args), nprocs=world_size, join=True)
    results = []
    for rank in range(world_size):
        with open(os.path.join(out_dir, f"rank{rank}.json")) as f:
            results.append(json.load(f))
    return results


_SPAWNED: dict[tuple[str, int], list[dict]] = {}


def spawned_once(tmp_path_factory, name: str, worker, world_size: int, make_args=tuple) -> list[dict]:
    """spawn_world's per-rank results, spawned once per (name, world size) per session: a test
    module's fixture asks for them once per test. make_args() gives the worker's extra args (called
    only when the world is spawned, so that building a checkpoint for it happens once)."""
    key = (name, world_size)
    if key not in _SPAWNED:
        out_dir = str(tmp_path_factory.mktemp(f"{name}{world_size}"))
        _SPAWNED[key] = spawn_world(worker, world_size, out_dir, *make_args())
    return _SPAWNED[key]
