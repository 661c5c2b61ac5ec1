"""vartrack: variable tracking. Chains of assignments ("VAR B = VAR A.") over `hops` hops;
the answer lists every variable of the chain that holds the asked value.

The first assignment of the asked chain sits at the requested depth and the rest follow it in
order at seeded depths; other chains (distractors) are spread over the whole haystack.
"""

from __future__ import annotations

import string

from . import needles as N
from .parts import Parts


def _names(rng, n):
    seen = set()
    while len(seen) < n:
        seen.add("".join(rng.choice(string.ascii_uppercase) for _ in range(5)))
    return rng.sample(sorted(seen), n)


def vartrack(ctx, depth, hops=4, chains=1):
    if not 1 <= hops <= 20 or not 1 <= chains <= 10:
        raise ValueError(f"hops={hops}, chains={chains} out of range; use hops 1-20, chains 1-10")
    rng = ctx.rng
    names = _names(rng, chains * (hops + 1))
    values = [str(v) for v in rng.sample(range(10_000, 100_000), chains)]
    needles, asked = [], None
    for c in range(chains):
        chain = names[c * (hops + 1):(c + 1) * (hops + 1)]
        if c == 0:
            fracs, asked = [depth] + N.spread(rng, hops, depth, 1.0), chain
        else:
            fracs = N.spread(rng, hops + 1)
        texts = [f" VAR {chain[0]} = {values[c]}."]
        texts += [f" VAR {b} = VAR {a}." for a, b in zip(chain, chain[1:])]
        needles += list(zip(texts, fracs))
    return Parts(
        instruction="Memorize and track the chain(s) of variable assignment hidden in the "
                    "following text.\n\n",
        question=f"\n\nQuestion: Find all variables that are assigned the value {values[0]} in "
                 "the text above.",
        answer_prefix=f"\nAnswer: According to the chain(s) of variable assignment in the text "
                      f"above, {hops + 1} variables are assigned the value {values[0]}, they are:",
        needles=needles,
        answers=list(asked),
        answer_text=" " + " ".join(asked),
        answer_joiner=" ",
    )
