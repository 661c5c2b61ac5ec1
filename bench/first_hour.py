"""`ctxprobe demo` idle and beside a busy process, interleaved in one run, with a paste-ready block.

Issue 20's goal: the demo's sweep on 2 cores within 1.5x of its idle time when one CPU-bound
process (`python -c "while True: pass"`) runs beside it; issue 19 item 10: timings stated with
the load they were measured at. Each demo runs in a fresh process and folder; rounds alternate
idle and busy so a load that drifts (other users) falls on both. Per demo it prints the sweep's
own time ("N cell(s) run in X s"), the process's wall time, the CPU seconds the demo process
used (user + system, from wait4: threads spinning or fighting show up here even when the wall
time is hidden by other load) and /proc/loadavg before and after.

The busy process starts in a session of its own (`--hog-session own`, the default), as a
program started from another terminal would: with the kernel's autogroup scheduling
(/proc/sys/kernel/sched_autogroup_enabled) each session shares the CPUs as one, so a busy
process started in the demo's own session halves the demo's share whenever other sessions keep
the machine busy. `--hog-session same` measures that case. `--one-thread` adds an idle demo
with `--threads 1`: what one core gives, the floor for the busy run on a 2-core machine.

    python bench/first_hour.py                        # the default demo grid (132 cells), 1 round
    python bench/first_hour.py --rounds 2 --one-thread --demo-args "--lengths 4k..16k:x2 --samples 1"
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOG = "while True: pass"


def loadavg() -> str:
    """/proc/loadavg's first four fields: 1-, 5-, 15-minute averages and runnable/all tasks now."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:4])
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def commit() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (done.stdout.strip() or "unknown") + (" (uncommitted changes)" if dirty else "")


def demo(extra: list[str]) -> dict:
    """One `ctxprobe demo` in a fresh folder: sweep s, process s, CPU s, load before and after."""
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryFile("w+") as log:
        before = loadavg()
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "ctxprobe", "demo", "--out", out, "--quiet", *extra],
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log,
                                stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)   # the demo's own rusage, not the busy process's
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        after = loadavg()
        log.seek(0)
        output = log.read()
    if proc.returncode:
        sys.exit(f"demo failed ({proc.returncode}):\n{output[-2000:]}")
    line = next(x for x in output.splitlines() if " cell(s) run in " in x)
    return {"sweep": float(line.split(" run in ")[1].split(" s")[0]), "wall": wall,
            "cpu": usage.ru_utime + usage.ru_stime, "before": before, "after": after}


def beside(busy: bool, own_session: bool):
    """A context: the busy process (started a second ahead, so it is running) or nothing."""
    class Hog:
        def __enter__(self):
            self.proc = None
            if busy:
                self.proc = subprocess.Popen([sys.executable, "-c", HOG], start_new_session=own_session)
                time.sleep(1.0)

        def __exit__(self, *exc):
            if self.proc is not None:
                self.proc.kill()
                self.proc.wait()
    return Hog()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1, help="idle/busy pairs, interleaved [default: 1]")
    ap.add_argument("--demo-args", default="", help="extra `ctxprobe demo` options, e.g. a smaller grid")
    ap.add_argument("--hog-session", choices=["own", "same"], default="own",
                    help="start the busy process in a session of its own (as from another terminal) "
                         "or in the demo's")
    ap.add_argument("--one-thread", action="store_true",
                    help="also run the demo idle with --threads 1 each round (the one-core floor)")
    args = ap.parse_args()
    extra = shlex.split(args.demo_args)
    kinds = [("idle", False, []), ("busy", True, [])]
    if args.one_thread:
        kinds.append(("idle, --threads 1", False, ["--threads", "1"]))
    rows = []
    for r in range(args.rounds):
        for i in range(len(kinds)):
            name, busy, more = kinds[(i + r) % len(kinds)] if r % 2 else kinds[i]   # alternate who goes first
            with beside(busy, args.hog_session == "own"):
                row = demo(extra + more)
            rows.append({"round": r, "kind": name, **row})
            print(f"round {r} {name:<18} sweep {row['sweep']:7.1f} s  process {row['wall']:7.1f} s  "
                  f"CPU {row['cpu']:7.1f} s  load {row['before']} -> {row['after']}", file=sys.stderr, flush=True)

    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    grouped = autogroup.read_text().strip() if autogroup.exists() else "n/a"
    command = "python bench/first_hour.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"**The demo beside a busy process** (`{command.strip()}`; commit {commit()}; "
          f"{os.cpu_count()} CPUs, affinity {len(os.sched_getaffinity(0))}; autogroup {grouped}; "
          f"busy process in {'its own session' if args.hog_session == 'own' else 'the demo session'}; "
          f"demo {' '.join(extra) or '(default grid)'}):")
    print()
    print("| round | beside | sweep s | process s | CPU s | /proc/loadavg before | after |")
    print("|---:|---|---:|---:|---:|---|---|")
    for row in rows:
        print(f"| {row['round']} | {row['kind']} | {row['sweep']:.1f} | {row['wall']:.1f} | {row['cpu']:.1f} "
              f"| {row['before']} | {row['after']} |")
    print()
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b > 0 else "n/a (a zero time)"

    for r in range(args.rounds):
        got = {row["kind"]: row for row in rows if row["round"] == r}
        idle, busy = got["idle"], got["busy"]
        text = (f"Round {r}: busy / idle = {ratio(busy['sweep'], idle['sweep'])} sweep, "
                f"{ratio(busy['wall'], idle['wall'])} process, {ratio(busy['cpu'], idle['cpu'])} CPU s")
        if "idle, --threads 1" in got:
            one = got["idle, --threads 1"]
            text += f"; busy / idle with one thread = {ratio(busy['sweep'], one['sweep'])} sweep"
        print(text + ".")
    print("Goal (issue 20): busy / idle sweep <= 1.5x.")


if __name__ == "__main__":
    main()
