"""`ctxprobe demo` alone and beside a busy process (one CPU-bound Python loop), in one run.

Each demo runs in a fresh process and a fresh folder (the whole default grid: 132 cells); the
figure is the sweep's own time as the demo prints it ("N cell(s) run in X s") and the
process's wall time. The busy process starts a second before the demo and is stopped after it.
Goal (issue 20): beside the busy process within 1.5x of the idle time.

    python bench/demo_load.py [--runs 2] [--base /path/to/old/checkout] [--demo-args "..."]
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


def demo(tree: Path, extra: list[str]) -> tuple[float, float, str]:
    """(sweep seconds, process seconds, load average at the end)."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "ctxprobe", "demo", "--out", out, "--quiet", *extra],
                              env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"demo failed ({done.returncode}):\n{done.stderr[-2000:]}")
    line = next(x for x in done.stdout.splitlines() if " cell(s) run in " in x)
    sweep = float(line.split(" run in ")[1].split(" s")[0])
    return sweep, wall, f"{os.getloadavg()[0]:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--base", default=None, help="an older checkout to time beside this one")
    ap.add_argument("--demo-args", default="", help="extra `ctxprobe demo` options, e.g. a smaller grid")
    args = ap.parse_args()
    extra = shlex.split(args.demo_args)
    trees = [("this", ROOT)] + ([("base", Path(args.base))] if args.base else [])
    print(f"{os.cpu_count()} CPUs, affinity {len(os.sched_getaffinity(0))}; demo {' '.join(extra) or '(default grid)'}")
    print(f"{'run':>3} {'tree':<5} {'beside':<7} {'sweep s':>8} {'process s':>10} {'load at end':>12}")
    for r in range(args.runs):
        for name, tree in trees:
            for busy in (False, True):
                hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
                try:
                    if hog:
                        time.sleep(1.0)
                    sweep, wall, load = demo(tree, extra)
                finally:
                    if hog:
                        hog.kill()
                        hog.wait()
                print(f"{r:>3} {name:<5} {'busy' if busy else 'idle':<7} {sweep:>8.1f} {wall:>10.1f} {load:>12}",
                      flush=True)


if __name__ == "__main__":
    main()
