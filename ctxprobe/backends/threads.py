"""Torch's intra-op threads for the native runner: the cores that are free, shared among the
passes the sweep runs at once.

Torch's OpenMP workers meet at the end of every parallel region, so one worker without a core
stalls them all: on the 2-core dev machine, with other processes busy, the demo's sweep took
6x longer with 2 threads than with 1 (BENCHMARKS.md). So the runner takes the cores this process
may run on (`os.sched_getaffinity`), less those other processes keep busy now (runnable tasks in
/proc/loadavg, less this process's own runnable threads), divided by the sweep's concurrency,
and at least one. It decides again every DECIDE_EVERY seconds, before a pass, so a process that
starts beside a long sweep is noticed. `--threads N` fixes the number instead.

torch is imported only to apply a decision, never to make one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

DECIDE_EVERY = 5.0     # seconds between decisions
_SAMPLES = 5           # reads of the runnable count per decision, _GAP seconds apart
_GAP = 0.002


def cores_available() -> int:
    """CPUs this process may run on (its affinity mask; the CPU count where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _runnable_here() -> int:
    """This process's threads that are running or waiting for a CPU now."""
    count = 0
    for stat in Path("/proc/self/task").glob("*/stat"):
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        count += state == "R"
    return count


def busy_elsewhere() -> float:
    """How many CPUs other processes keep busy now: the system's runnable tasks (/proc/loadavg's
    fourth field counts them, ours included) less ours, averaged over a few reads; the 1-minute
    load average where /proc has neither."""
    try:
        reads = []
        for i in range(_SAMPLES):
            if i:
                time.sleep(_GAP)
            everyone = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
            reads.append(max(0, everyone - _runnable_here()))
        return sum(reads) / len(reads)
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0


def pick_threads(concurrency: int = 1, *, cores: int | None = None, busy: float | None = None) -> int:
    """Intra-op threads per pass: the free cores shared among `concurrency` passes, at least 1."""
    cores = cores_available() if cores is None else cores
    busy = busy_elsewhere() if busy is None else busy
    free = cores - min(cores - 1, int(busy + 0.5))
    return max(1, free // max(1, concurrency))


class ThreadPlan:
    """Sets torch's intra-op threads before each pass: `requested` if given, else pick_threads()
    again every DECIDE_EVERY seconds."""

    def __init__(self, requested: int | None = None, concurrency: int = 1):
        if requested is not None and (isinstance(requested, bool) or int(requested) != requested
                                      or requested < 1):
            raise ValueError(f"threads must be a whole number of at least 1, got {requested!r}")
        self.requested, self.concurrency = requested, concurrency
        self.threads: int | None = None     # what torch was last set to by this plan
        self._decided = -float("inf")

    def apply(self) -> int:
        now = time.monotonic()
        if self.threads is not None and (self.requested is not None or now - self._decided < DECIDE_EVERY):
            return self.threads
        self._decided = now
        threads = self.requested or pick_threads(self.concurrency)
        if threads != self.threads:
            import torch

            torch.set_num_threads(threads)
            self.threads = threads
        return threads
