"""Build the built-in model into ctxprobe/builtin/model and print its design curve.

    python scripts/build_builtin.py [--out ctxprobe/builtin/model] [--seed 0]

The model is constructed, not trained (see ctxprobe/builtin/construct.py for the circuit); the
only randomness is the MoE layers' weights, drawn from --seed. The design curve printed here
(the first answer digit's attention weight against prompt length, from the word-start density
measured on the default haystack) replaces a training curve; docs/builtin.md records it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ctxprobe.builtin import construct
from ctxprobe.probes import load_tokenizer, make_probe


def word_start_density(tokenizer, lengths=(2048, 4096, 8192), samples=3) -> float:
    """Word starts after a word of >= 2 characters, per token, in default-haystack niah probes."""
    kinds = {" ": "s", ".": "p"}

    def kind(c):
        return "d" if c.isdigit() else kinds.get(c, "o")

    count = total = 0
    for length in lengths:
        for sample in range(samples):
            text = make_probe("niah", length, 50, seed=0, sample=sample, tokenizer=tokenizer).prompt
            count += sum(1 for i in range(3, len(text))
                         if kind(text[i - 1]) == "s" and kind(text[i - 2]) == "o" and kind(text[i - 3]) == "o")
            total += length
    return count / total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "ctxprobe/builtin/model"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = construct.write(args.out, seed=args.seed)
    tok = load_tokenizer(str(out / "tokenizer.json"))
    density = word_start_density(tok)
    print(f"wrote {out}; bonus B = {construct.BONUS}; word starts per token = {density:.4f}")
    print(f"cliff (first-digit weight = 1/2) at {construct.cliff_length(density):.0f} tokens")
    print("length  word_starts  first_digit_weight  greedy_correct")
    for length in (512, 1024, 2048, 4096, 5792, 8192, 16384, 32768):
        w = construct.first_digit_weight(density * length)
        print(f"{length:6d}  {density * length:11.0f}  {w:18.3f}  {'yes' if w > 0.5 else 'no'}")


if __name__ == "__main__":
    main()
