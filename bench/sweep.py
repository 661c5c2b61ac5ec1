"""What ctxprobe itself adds to a sweep, without any model: the results store's commit rate
(one transaction per finished cell, WAL) and HTTP sweep throughput against a loopback fake
OpenAI server that answers instantly (probe building, /tokenize, request, scoring, commit).

    python bench/sweep.py                       # 2000 commits; 64 cells at 4K
    python bench/sweep.py --cells 256 --length 16k
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT), str(_ROOT / "tests")]

from fake_openai import FakeOpenAI, answers_for  # noqa: E402

from ctxprobe.backends.http import HttpBackend  # noqa: E402
from ctxprobe.units import parse_tokens  # noqa: E402
from ctxprobe.store import Store  # noqa: E402
from ctxprobe.sweep import Grid, open_run, run_sweep  # noqa: E402


def bench_commits(n: int, folder: Path) -> float:
    with Store(folder / "commits.db") as store:
        run = store.create_run(name="bench", model_spec="m", model_fingerprint="f", backend={},
                               tokenizer_fingerprint="t", version="0", command="bench")
        start = time.perf_counter()
        for i in range(n):
            store.put_cell(run.id, dict(family="niah", length=4096, depth=50.0, sample=i, seed=0,
                                        score=1.0, response=" 1234567", latency=0.1))
        return n / (time.perf_counter() - start)


def bench_http(cells: int, length: int, folder: Path) -> dict[str, float]:
    """cells/s of: the first sweep in a process (every haystack sentence tokenized through the
    server's /tokenize), then the same grid into fresh runs at concurrency 1 and 8."""
    samples = max(1, cells // 4)
    grid = dict(families=["niah"], lengths=[length], depths=[0.0, 33.0, 67.0, 100.0], samples=samples)
    rates = {}
    with FakeOpenAI(answers_for(**grid)) as fake:
        for label, concurrency in (("first", 8), ("c1", 1), ("c8", 8)):
            backend = HttpBackend(fake.url, concurrency=concurrency, environ={})
            with Store(folder / f"http-{label}.db") as store:
                spec = Grid(**grid)
                run = open_run(store, backend, spec, model_spec="openai:" + fake.url)
                stats = run_sweep(store, run, backend, spec, progress=False)
                assert stats.errored == 0 and stats.finished == 4 * samples
                rates[label] = stats.finished / stats.seconds
    return rates


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commits", type=int, default=2000)
    ap.add_argument("--cells", type=int, default=64)
    ap.add_argument("--length", default="4k")
    args = ap.parse_args()
    length = parse_tokens(args.length, "--length")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"store: {bench_commits(args.commits, folder):,.0f} cell commits/s "
              f"({args.commits} commits, one transaction each, WAL)")
        rates = bench_http(args.cells, length, folder)
        cells = 4 * max(1, args.cells // 4)  # 4 depths x samples
        print(f"http: {cells} cells at {args.length} tokens: first sweep {rates['first']:,.1f} "
              f"cells/s (haystack tokenized via /tokenize, 8 at a time); then {rates['c1']:,.1f} "
              f"cells/s at concurrency 1, {rates['c8']:,.1f} at concurrency 8")


if __name__ == "__main__":
    main()
