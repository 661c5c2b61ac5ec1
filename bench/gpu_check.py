"""Every GPU check of the project in one call, within one time budget (the device tool allows
10 minutes a command and 15 minutes a session, start-up included).

    python bench/gpu_check.py --budget-s 540        # on the lent H100 / H200
    python bench/gpu_check.py --small               # CPU rehearsal, a few minutes

Steps, each a subprocess with its own share of the budget, so one failure or hang costs only its
share; every step's output is echoed and also written to $OUT/<step>.log when OUT is set:
  1. pytest tests/test_attention_cuda.py tests/test_runner_cuda.py
                                                  CUDA backends against the reference; the runner's
                                                  weight / KV / hidden-state tiers, score, generate,
                                                  traffic, leaks and a one-rank NCCL group against the CPU
  2. bench/attention.py                           (a) backends, (b) 128K resident vs streamed, (c) 1M host, disk
  3. bench/ring.py                                single-rank NCCL ring against plain attend at 128K
  4. bench/runner.py                              scout-4l at 128K and 1M, then the longest prompt that fits
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, share of the budget, GPU command, CPU rehearsal command)
# -rfEs: every failure, error and skip reason in the summary (a CUDA test skipped on the card is a finding);
# faulthandler: a test still running after 40 s has every thread's stack printed before the step is killed.
CUDA_TESTS = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-o", "faulthandler_timeout=40",
              "tests/test_attention_cuda.py", "tests/test_runner_cuda.py"]
STEPS = [
    ("cuda_tests", 0.14, CUDA_TESTS, CUDA_TESTS),
    ("attention", 0.28, [sys.executable, "bench/attention.py", "--time-limit", "{t}"],
     [sys.executable, "bench/attention.py", "--small", "--time-limit", "{t}"]),
    ("ring", 0.08, [sys.executable, "bench/ring.py", "--seq-len", "131072", "--heads", "40", "--kv-heads", "8",
                    "--head-dim", "128", "--dtype", "bfloat16", "--repeats", "2"],
     [sys.executable, "bench/ring.py", "--seq-len", "2048"]),
    ("runner", 0.50, [sys.executable, "bench/runner.py", "--budget-s", "{t}"],
     [sys.executable, "bench/runner.py", "--preset", "tiny", "--lengths", "2k,8k", "--budget-s", "{t}"]),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=540.0, help="seconds for all steps together")
    ap.add_argument("--small", action="store_true", help="CPU rehearsal at small sizes")
    ap.add_argument("--steps", default=",".join(s[0] for s in STEPS), help="comma-separated subset")
    args = ap.parse_args()
    wanted = set(args.steps.split(","))
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    start = time.monotonic()
    shares_left = sum(s[1] for s in STEPS if s[0] in wanted)
    for name, share, gpu_cmd, cpu_cmd in STEPS:
        if name not in wanted:
            continue
        left = args.budget_s - (time.monotonic() - start)
        limit = max(10.0, left * share / shares_left)  # time a step leaves unused goes to the later ones
        shares_left -= share
        if left < 10:
            print(f"== {name}: SKIPPED, {left:.0f} s left of the budget", flush=True)
            continue
        # The step gets 90% of its share for its own planning; the rest is our kill margin.
        cmd = [c.replace("{t}", f"{0.9 * limit:.0f}") for c in (cpu_cmd if args.small else gpu_cmd)]
        print(f"== {name}: {' '.join(cmd[1:])} (limit {limit:.0f} s)", flush=True)
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
            text, status = proc.stdout + proc.stderr, f"exit {proc.returncode}"
        except subprocess.TimeoutExpired as e:  # its output comes as bytes whatever text= says
            text = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                           for x in (e.stdout, e.stderr))  # stderr: the traceback of a hang
            status = "TIMED OUT"
        print(text, flush=True)
        print(f"== {name}: {status} after {time.monotonic() - t0:.0f} s", flush=True)
        if out_dir is not None:
            (out_dir / f"{name}.log").write_text(text + f"\n{status}\n")
    print(f"== all steps done in {time.monotonic() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
