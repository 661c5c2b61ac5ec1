"""ctxprobe's `probes export` beside RULER's `niah.py`, per command and per probe, in one run.

Both build niah_single_1-style prompts (one needle: a word key, a 7-digit number; RULER's noise
haystack) with the same tokenizer for a model context of L tokens (RULER's max_seq_length: the
prompt plus 128 tokens to generate; ctxprobe is asked for L - 128 prompt tokens). Each command
runs in a fresh process and is timed whole (start-up, tokenizer, haystack, probes, writing the
JSONL). Per probe = (time with N probes - time with 1) / (N - 1), N = --many (RULER) and
--many-ctxprobe (more, since its probes are fast and the difference must stand above the noise);
RULER's own progress bar (seconds per sample of its sample loop) is shown too. The two tools
alternate, run after run, so a change in the machine's load hits both. Also reported: how far
each tool's prompts are from the length asked (RULER's search stops at the largest haystack
under the limit).

RULER is not part of ctxprobe: fetch it yourself (github.com/NVIDIA/RULER), install what its
niah.py imports into a folder (pip install --target DIR wonderwords nltk tenacity) and pass both:

    python bench/bpe32k.py /tmp/bpe32k
    python bench/ruler.py --ruler /tmp/RULER/scripts/data/synthetic/niah.py --ruler-deps DIR \\
        --tokenizer /tmp/bpe32k --lengths 128k,1M --runs 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"32k": 32 * 1024, "128k": 128 * 1024, "1M": 1 << 20}
TO_GENERATE = 128
# RULER's niah task template with its answer prefix, as its prepare.py composes them.
TEMPLATE = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to "
            "memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are "
            "all the special magic {type_needle_v} for {query} mentioned in the provided text? The "
            "special magic {type_needle_v} for {query} mentioned in the provided text are")


def ruler_command(args, length: int, samples: int, out: Path) -> list[str]:
    return [sys.executable, args.ruler, "--save_dir", str(out), "--save_name", "niah_single_1",
            "--tokenizer_path", args.tokenizer, "--tokenizer_type", "hf",
            "--max_seq_length", str(length), "--tokens_to_generate", str(TO_GENERATE),
            "--num_samples", str(samples), "--random_seed", "42", "--num_needle_k", "1",
            "--num_needle_v", "1", "--num_needle_q", "1", "--type_haystack", "noise",
            "--type_needle_k", "words", "--type_needle_v", "numbers", "--template", TEMPLATE]


def ctxprobe_command(args, length: int, samples: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "ctxprobe", "probes", "export", "niah", "--lengths",
            str(length - TO_GENERATE), "--depths", "50", "--samples", str(samples), "--haystack", "noise",
            "--tokenizer", args.tokenizer, "--verify", args.verify, "-o", str(out / "probes.jsonl")]


def timed(command: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(command[:3])} ...\n{done.stderr[-2000:]}")
    return seconds, done.stderr


def progress_rate(stderr: str) -> str:
    """RULER's tqdm figure for its sample loop, e.g. '9.81s/it', or '-'."""
    rates = re.findall(r"([0-9.]+(?:s/it|it/s))\]", stderr)
    return rates[-1] if rates else "-"


def shortfall(tool: str, out: Path, length: int, tokenizer) -> list[int]:
    """Tokens each of the first 5 prompts lacks against L - 128, counted with the tokenizer."""
    path = out / "niah_single_1" / "validation.jsonl" if tool == "ruler" else out / "probes.jsonl"
    with path.open() as f:
        rows = [json.loads(line) for line, _ in zip(f, range(5))]
    texts = [r["input"] + r["answer_prefix"] if tool == "ruler" else r["prompt"] for r in rows]
    return [length - TO_GENERATE - len(tokenizer.encode(t)) for t in texts]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ruler", required=True, help="path to RULER's scripts/data/synthetic/niah.py")
    ap.add_argument("--ruler-deps", default=None, help="a folder holding niah.py's imports (pip --target)")
    ap.add_argument("--tokenizer", required=True, help="a directory holding tokenizer.json")
    ap.add_argument("--lengths", default="128k,1M", help=f"subset of {','.join(SIZES)}")
    ap.add_argument("--runs", type=int, default=2, help="alternating runs of each tool")
    ap.add_argument("--verify", default="sampled", help="ctxprobe's --verify")
    ap.add_argument("--many", type=int, default=5, help="RULER's samples in the longer command")
    ap.add_argument("--many-ctxprobe", type=int, default=21, help="ctxprobe's probes in the longer command")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from ctxprobe.probes import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ruler_env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (args.ruler_deps, str(ROOT)) if p)}
    print(f"tokenizer {args.tokenizer} ({tok.vocab_size} tokens); ctxprobe --verify {args.verify}; "
          f"{os.cpu_count()} CPUs")
    print(f"{'length':>8} {'run':>3} {'tool':<9} {'1 probe s':>10} {'N':>3} {'N probes s':>11} "
          f"{'per probe s':>12} {'own bar':>9} {'load':>5}  tokens short of L-128")
    for name in args.lengths.split(","):
        length = SIZES[name]
        for run in range(args.runs):
            for tool, command in (("ruler", ruler_command), ("ctxprobe", ctxprobe_command)):
                tool_env = ruler_env if tool == "ruler" else env
                n = args.many if tool == "ruler" else args.many_ctxprobe
                with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as many:
                    t1, _ = timed(command(args, length, 1, Path(one)), tool_env)
                    tn, log = timed(command(args, length, n, Path(many)), tool_env)
                    short = shortfall(tool, Path(many), length, tok)
                bar = progress_rate(log) if tool == "ruler" else "-"
                print(f"{name:>8} {run:>3} {tool:<9} {t1:>10.2f} {n:>3} {tn:>11.2f} {(tn - t1) / (n - 1):>12.3f} "
                      f"{bar:>9} {os.getloadavg()[0]:>5.2f}  {short}", flush=True)


if __name__ == "__main__":
    main()
