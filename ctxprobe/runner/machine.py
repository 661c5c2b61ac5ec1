"""Budgets checked against the machine they are given on (`inspect`, `bench`, `run`).

A budget the machine cannot back is allowed, since planning for another machine is a use of
`inspect`, but never silent: each returns one warning line. --gpu-memory where the work runs on
the CPU is read as the CPU's (host) memory budget; --host-memory above this machine's total
memory plans for memory that is not there.
"""

from __future__ import annotations

from ctxprobe.units import fmt_bytes, parse_bytes


def total_memory() -> int | None:
    """This machine's memory in bytes (MemTotal), or None where /proc/meminfo is not readable."""
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f if ":" in line)
        return int(info["MemTotal"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def budget_warnings(*, gpu_memory=None, host_memory=None, device: str | None = None,
                    cuda: bool | None = None) -> list[str]:
    """Warnings (without the 'warning: ' prefix) for budgets this machine cannot back.

    device: where the work runs ("cpu", "cuda:0"; "auto": cuda when there is one, as --device's
    default); None for a plan only (inspect), which a machine without a GPU makes for a GPU that
    is not here. cuda: whether this machine has a CUDA device (None: ask torch, only when
    --gpu-memory was given)."""
    out = []
    if gpu_memory is not None:
        if cuda is None:
            import torch

            cuda = torch.cuda.is_available()
        if device == "auto":
            device = "cuda" if cuda else "cpu"
        if device is None and not cuda:
            out.append(f"--gpu-memory {gpu_memory}: this machine has no CUDA device; the plan is for a "
                       "machine with such a GPU (and this machine's host memory unless --host-memory "
                       "is given), not for a run here")
        elif device is not None and not device.startswith("cuda"):
            where = "this machine has no CUDA device" if not cuda else f"--device {device}"
            out.append(f"--gpu-memory {gpu_memory}: {where}, so the work runs on the CPU, where "
                       "--gpu-memory is read as the budget of host memory")
    total = total_memory()
    if host_memory is not None and total is not None:
        try:
            asked = parse_bytes(host_memory, "--host-memory")
        except Exception:   # the planner names a bad size itself
            asked = None
        if asked is not None and asked > total:
            out.append(f"--host-memory {host_memory} is more than this machine's memory "
                       f"({fmt_bytes(total)} in all): a plan that uses it will not fit here")
    return out
