"""Torch's intra-op threads for the native runner: the cores that are free, shared among the
passes the sweep runs at once.

Torch's OpenMP workers meet at the end of every parallel region, so one worker without a core
stalls them all: on the 2-core dev machine, with other processes busy, the demo's sweep took
6x longer with 2 threads than with 1 (BENCHMARKS.md). So the runner takes the cores this process
may run on (`os.sched_getaffinity`), less those other processes keep busy, divided by the
sweep's concurrency, and at least one. Busy is the larger of two readings: other processes'
runnable tasks now (/proc/loadavg's fourth field less this process's own runnable threads: sees
a process that has just started) and the CPUs they used on average since the last decision
(/proc/stat less /proc/self/stat: sees one that runs in bursts, which a moment's count misses
half of the time). It decides again every DECIDE_EVERY seconds, before a pass, so a process that
starts beside a long sweep is noticed. `--threads N` fixes the number instead.

Between parallel regions libgomp's workers spin (about 300,000 rounds) before they sleep. On a
machine whose cores are all taken that spinning takes CPU time from the worker everyone waits
for: 2 threads used 38.6 CPU s for a sweep that 1 thread did in 22.6 (BENCHMARKS.md). So the
native backend asks for OMP_WAIT_POLICY=PASSIVE (sleep at once; 22.6 CPU s with 2 threads)
unless the user set it; libgomp reads it once, when torch loads it (`passive_waits`).

torch is imported only to apply a decision, never to make one.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

DECIDE_EVERY = 5.0     # seconds between decisions
_SAMPLES = 5           # reads of the runnable count per decision, _GAP seconds apart
_GAP = 0.002
PROC = Path("/proc")
WAIT_POLICY = "PASSIVE"   # OpenMP workers sleep, not spin, when they run out of work


def passive_waits(environ=os.environ, modules=sys.modules) -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE unless it is set already or torch is loaded (libgomp read the
    environment then, once); -> whether the environment asks for passive waits."""
    if "torch" not in modules:
        environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    return environ.get("OMP_WAIT_POLICY", "").strip().upper() == WAIT_POLICY


def cores_available() -> int:
    """CPUs this process may run on (its affinity mask; the CPU count where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _runnable_here(proc: Path = PROC) -> int:
    """This process's threads that are running or waiting for a CPU now."""
    count = 0
    for stat in (proc / "self" / "task").glob("*/stat"):
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        count += state == "R"
    return count


def runnable_elsewhere(proc: Path = PROC, *, samples: int = _SAMPLES, gap: float = _GAP) -> float:
    """How many tasks of other processes run or wait for a CPU now: the system's runnable tasks
    (/proc/loadavg's fourth field counts them, ours included) less ours, averaged over a few
    reads `gap` seconds apart. Raises OSError/ValueError/IndexError where /proc cannot say."""
    reads = []
    for i in range(samples):
        if i:
            time.sleep(gap)
        everyone = int((proc / "loadavg").read_text().split()[3].split("/")[0])
        reads.append(max(0, everyone - _runnable_here(proc)))
    return sum(reads) / len(reads)


def cpu_ticks(proc: Path = PROC) -> tuple[int, int]:
    """(clock ticks all CPUs spent busy since boot, clock ticks this process has used): /proc/stat's
    first line less idle and iowait (guest time is inside user time), and /proc/self/stat's
    utime + stime."""
    fields = (proc / "stat").read_text().splitlines()[0].split()
    if fields[0] != "cpu":
        raise ValueError(f"/proc/stat starts with {fields[0]!r}, not the all-CPU line")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in (fields[1:9] + ["0"] * 8)[:8])
    mine = (proc / "self" / "stat").read_text().rsplit(")", 1)[1].split()
    return user + nice + system + irq + softirq + steal, int(mine[11]) + int(mine[12])


class OthersUse:
    """CPUs other processes used, on average, between two reads of /proc/stat: what they took,
    not what they asked for, over seconds rather than a moment. Our own threads (spinning ones
    included) are left out by subtracting this process's ticks."""

    MIN_SPAN = 0.5    # seconds: shorter spans are mostly rounding of the tick counts

    def __init__(self, proc: Path = PROC, clock=time.monotonic):
        self.proc, self.clock = proc, clock
        self._last: tuple[float, int, int] | None = None
        try:
            self.tick = float(os.sysconf("SC_CLK_TCK"))
        except (AttributeError, ValueError, OSError):
            self.tick = 100.0

    def since_last(self) -> float | None:
        """Others' average CPUs since the previous call (None on the first, or after too short a
        span, or where /proc cannot say)."""
        try:
            busy, mine = cpu_ticks(self.proc)
        except (OSError, ValueError, IndexError):
            return None
        now = self.clock()
        last = self._last
        if last is not None and now - last[0] < self.MIN_SPAN:
            return None       # keep the older read: a longer span next time
        self._last = (now, busy, mine)
        if last is None:
            return None
        return max(0.0, ((busy - last[1]) - (mine - last[2])) / self.tick / (now - last[0]))


def busy_elsewhere(proc: Path = PROC, recent: float | None = None) -> float:
    """How many CPUs other processes keep busy: the larger of their runnable tasks now and
    `recent` (their average use since the last decision, OthersUse), so a process that has just
    started and one that runs in bursts are both seen; the 1-minute load average where /proc
    has neither."""
    try:
        now = runnable_elsewhere(proc)
    except (OSError, ValueError, IndexError):
        try:
            now = os.getloadavg()[0]
        except OSError:
            now = 0.0
    return max(now, recent or 0.0)


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
        self.others = OthersUse()
        self.others.since_last()            # the first decision sees the time since the plan was made

    def apply(self) -> int:
        now = time.monotonic()
        if self.threads is not None and (self.requested is not None or now - self._decided < DECIDE_EVERY):
            return self.threads
        self._decided = now
        threads = self.requested or pick_threads(self.concurrency, busy=busy_elsewhere(
            recent=self.others.since_last()))
        if threads != self.threads:
            import torch

            torch.set_num_threads(threads)
            self.threads = threads
        return threads
