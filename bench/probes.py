"""Time and peak memory to build one probe (`niah` unless --family) at 128K, 1M and 10M tokens,
by exactness check.

Checks (`verify`, probes/exactness.py): `sampled` (the default: every adjacent pair of pieces,
remembered per pool, then windows in context), `junctions` (the joins between parts only),
`full` (the whole prompt re-tokenized once). Every build also renders the prompt string.
`cold` includes generating and tokenizing the haystack's sentences (first use of a seed and
tokenizer in a process); `warm` is a second build with another depth, sentences already
tokenized; `sample 1` is the next sample of the same seed (a new order of the same sentences,
so new pairs to check). `warm CPU s` is the warm build's CPU time: with the tokenizer on one
thread (as here) that is its wall time on an idle core, however busy the machine is now. Peak memory is tracemalloc's peak over a warm build (Python and numpy
allocations).

    python bench/probes.py                       # bytes + a tiny BPE trained on the spot
    python bench/probes.py --tokenizer /tmp/bpe32k --lengths 128k,1M --haystack noise
    python bench/probes.py --family mrcr --param needles=4     # any family, with its parameters
(python bench/bpe32k.py /tmp/bpe32k trains the 32K BPE.)
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core, as the goal states

from ctxprobe.probes import load_tokenizer, make_probe  # noqa: E402
from ctxprobe.probes.prose import sentences  # noqa: E402

SIZES = {"128k": 128 * 1024, "1M": 1 << 20, "10M": 10 << 20}
CASES = [("128k", "sampled"), ("1M", "sampled"), ("10M", "sampled"), ("1M", "junctions"), ("1M", "full")]


def train_tiny_bpe(directory: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + 400, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = sentences(random.Random(7), 2000)
    tok.train_from_iterator(["".join(text[i:i + 40]) for i in range(0, len(text), 40)], trainer)
    path = directory / "tokenizer.json"
    tok.save(str(path))
    return path


FAMILY, PARAMS = "niah", {}


def build(tok, length, mode, depth, seed, haystack, sample=0):
    p = make_probe(FAMILY, length, depth, seed=seed, sample=sample, tokenizer=tok, haystack=haystack,
                   verify=mode, **PARAMS)
    assert len(p.prompt) > 0 and len(p.token_array) == length and p.verified in (mode, "full")
    return p


def measure(tok, length, mode, seed, haystack):
    def timed(depth, sample=0):
        t0, c0 = time.perf_counter(), time.process_time()
        build(tok, length, mode, depth, seed, haystack, sample)
        return time.perf_counter() - t0, time.process_time() - c0

    cold = timed(50)                                 # cold for this seed's sentences
    warm = timed(30)
    tracemalloc.start()
    build(tok, length, mode, 70, seed, haystack)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return cold, warm, timed(30, sample=1), peak / 2**20


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:4])
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", help="a tokenizer.json to use instead of the tiny trained BPE")
    ap.add_argument("--lengths", default="128k,1M,10M", help="subset of 128k,1M,10M")
    ap.add_argument("--family", default="niah", help="the probe family to build")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="a family parameter, as in `ctxprobe probes show --param`")
    ap.add_argument("--haystack", default=None, help="'noise' (RULER's) [default: procedural prose]")
    args = ap.parse_args()
    global FAMILY, PARAMS
    FAMILY, PARAMS = args.family, dict(p.split("=", 1) for p in args.param)
    print(f"family {FAMILY} {PARAMS or ''}".rstrip())
    wanted = set(args.lengths.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        bpe = args.tokenizer or train_tiny_bpe(Path(tmp))
        toks = [("byte", load_tokenizer(None)), (f"bpe ({Path(bpe).name})", load_tokenizer(bpe))]
        print(f"/proc/loadavg {loadavg()}; haystack {args.haystack or 'procedural'}")
        print(f"{'tokenizer':<22} {'length':>10} {'check':<10} {'cold s':>8} {'warm s':>8} "
              f"{'sample 1 s':>10} {'warm CPU s':>10} {'peak MiB':>9}")
        for seed, (name, tok) in enumerate(toks):
            for case, (size, mode) in enumerate(CASES):
                if size not in wanted:
                    continue
                # A fresh seed per case, so `cold` really includes tokenizing the sentences.
                cold, warm, nxt, peak = measure(tok, SIZES[size], mode, seed * 100 + case, args.haystack)
                print(f"{name:<22} {SIZES[size]:>10,} {mode:<10} {cold[0]:>8.3f} {warm[0]:>8.3f} {nxt[0]:>10.3f} "
                      f"{warm[1]:>10.3f} {peak:>9.1f}", flush=True)
        print(f"/proc/loadavg {loadavg()}")


if __name__ == "__main__":
    main()
