"""The cache-friendly order of a depth sweep (issue 16 item 4), counted and measured.

Counted (no server): for a grid, the prompt tokens that each request shares with the one before
it, summed, in ctxprobe's work order, in the order before issue 16 (depth-major within a length,
families interleaved) and shuffled: the prefill that a server caching its last prompt skips.

Measured (--server URL, an OpenAI-compatible server that caches prompts, e.g. llama.cpp's or
llama-cpp-python's): each order sent one request at a time (max_tokens 1, cache_prompt), after
a request of unrelated text so that each order starts cold; wall time, and the cached tokens the
server reported: `usage.prompt_tokens_details.cached_tokens` or llama.cpp's `timings.cache_n`
in its replies, or else the "N prefix-match hit" lines that llama-cpp-python's server writes to
its log (--log FILE, the server started with verbose logging).

    python bench/cache_order.py --tokenizer ckpt/ --lengths 1k..8k:x2 --depths 0..100:11
    python bench/cache_order.py --tokenizer ckpt/ --server http://127.0.0.1:8080/v1 --log server.log
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ctxprobe.grid import parse_depths, parse_lengths  # noqa: E402
from ctxprobe.sweep.cells import plan_cells, shared_prefix_tokens, work_order  # noqa: E402

_HIT = re.compile(r"(\d+) prefix-match hit")


def orders(cells, seed: int) -> dict[str, list]:
    shuffled = list(cells)
    random.Random(seed).shuffle(shuffled)
    return {"ctxprobe (cache-friendly)": [c for batch in work_order(cells) for c in batch],
            "before issue 16": sorted(cells, key=lambda c: (c.sample, c.length, c.depth, c.family)),
            "shuffled": shuffled}


def build(cells, tokenizer, seed: int) -> dict:
    from ctxprobe.probes import make_probe

    return {c: make_probe(c.family, c.length, c.depth, seed=seed, sample=c.sample, tokenizer=tokenizer)
            for c in cells}


def send(client, prompts: list[str], log: Path | None) -> tuple[float, int | None, int]:
    """(wall seconds, cached tokens the server reported or None, prompt tokens it counted)."""
    client.request("completions", {"prompt": "A cold start: nothing here is in any probe. " * 8,
                                   "max_tokens": 1, "temperature": 0.0, "cache_prompt": True})
    log_start = log.stat().st_size if log is not None else 0
    cached, counted, reported = 0, 0, False
    start = time.perf_counter()
    for prompt in prompts:
        reply = client.request("completions", {"prompt": prompt, "max_tokens": 1, "temperature": 0.0,
                                               "cache_prompt": True})
        usage = reply.get("usage") or {}
        counted += int(usage.get("prompt_tokens") or 0)
        details = usage.get("prompt_tokens_details") or {}
        timings = reply.get("timings") or {}
        for value in (details.get("cached_tokens"), timings.get("cache_n")):
            if isinstance(value, int):
                cached += value
                reported = True
                break
    seconds = time.perf_counter() - start
    if not reported and log is not None:
        time.sleep(0.5)   # the server flushes its log line after the reply
        with open(log, errors="replace") as f:
            f.seek(log_start)
            hits = [int(m.group(1)) for m in _HIT.finditer(f.read())]
        return seconds, sum(hits), counted
    return seconds, (cached if reported else None), counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json or its directory (the served model's)")
    parser.add_argument("--probe", default="niah")
    parser.add_argument("--lengths", default="1k..8k:x2")
    parser.add_argument("--depths", default="0..100:11")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server", default=None, help="base URL, e.g. http://127.0.0.1:8080/v1")
    parser.add_argument("--log", type=Path, default=None, help="the server's log (llama-cpp-python)")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()

    from ctxprobe.probes import load_tokenizer

    cells = plan_cells(args.probe.split(","), parse_lengths(args.lengths), parse_depths(args.depths),
                       args.samples)
    probes = build(cells, load_tokenizer(args.tokenizer), args.seed)
    total = sum(len(p.token_ids) for p in probes.values())
    print(f"{len(cells)} cells ({args.probe}; lengths {args.lengths}; depths {args.depths}; "
          f"{args.samples} sample(s)): {total:,} prompt tokens")
    client = None
    if args.server:
        from ctxprobe.backends.http import JsonClient

        client = JsonClient(args.server, timeout=args.timeout)
    header = f"{'order':<26} {'shared with previous':>21} {'share':>6}"
    if client:
        header += f" {'server: cached':>15} {'prompt tokens':>14} {'wall s':>8}"
    print(header)
    for name, order in orders(cells, args.seed).items():
        shared = shared_prefix_tokens(probes[c].token_ids for c in order)
        line = f"{name:<26} {shared:>21,} {shared / total:>6.1%}"
        if client:
            seconds, cached, counted = send(client, [probes[c].prompt for c in order], args.log)
            line += f" {'-' if cached is None else format(cached, ','):>15} {counted:>14,} {seconds:>8.1f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
