"""Time and peak memory to build one `niah` probe at 128K, 1M and 10M tokens.

Modes: `ids` (token ids; junctions re-tokenized), `text` (ids, then the prompt string),
`text+check` (ids, prompt, and the whole prompt re-tokenized once). `cold` includes generating
and tokenizing the haystack's sentences (first use of a seed and tokenizer in a process);
`warm` is a second build with another depth, sentences already tokenized. Peak memory is
tracemalloc's peak over the warm build (Python and numpy allocations).

    python bench/probes.py                       # bytes + a tiny BPE trained on the spot
    python bench/probes.py --tokenizer tokenizer.json --lengths 128k,1M
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

# This file is named like the package it measures: run as a script, its own folder would
# shadow `probes`, so import from the repository root instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE.parent)]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core, as the goal states

from probes import load_tokenizer, make_probe  # noqa: E402
from probes.prose import sentences  # noqa: E402

SIZES = {"128k": 128 * 1024, "1M": 1 << 20, "10M": 10 << 20}
CASES = [("128k", "ids"), ("1M", "ids"), ("10M", "ids"), ("1M", "text"), ("1M", "text+check")]


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


def build(tok, length, mode, depth, seed):
    p = make_probe("niah", length, depth, seed=seed, tokenizer=tok,
                   verify=True if mode == "text+check" else False)
    if mode != "ids":
        assert len(p.prompt) > 0
    assert len(p.token_array) == length
    return p


def measure(tok, length, mode, seed):
    t0 = time.perf_counter()
    build(tok, length, mode, 50, seed)               # cold for this seed's sentences
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    build(tok, length, mode, 30, seed)
    warm = time.perf_counter() - t0
    tracemalloc.start()
    build(tok, length, mode, 70, seed)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return cold, warm, peak / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", help="a tokenizer.json to use instead of the tiny trained BPE")
    ap.add_argument("--lengths", default="128k,1M,10M", help="subset of 128k,1M,10M")
    args = ap.parse_args()
    wanted = set(args.lengths.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        bpe = args.tokenizer or train_tiny_bpe(Path(tmp))
        toks = [("byte", load_tokenizer(None)), (f"bpe ({Path(bpe).name})", load_tokenizer(bpe))]
        print(f"{'tokenizer':<22} {'length':>10} {'mode':<11} {'cold s':>8} {'warm s':>8} {'peak MiB':>9}")
        for seed, (name, tok) in enumerate(toks):
            for case, (size, mode) in enumerate(CASES):
                if size not in wanted:
                    continue
                # A fresh seed per case, so `cold` really includes tokenizing the sentences.
                cold, warm, peak = measure(tok, SIZES[size], mode, seed * 100 + case)
                print(f"{name:<22} {SIZES[size]:>10,} {mode:<11} {cold:>8.3f} {warm:>8.3f} {peak:>9.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
