"""Seeded procedural English prose: varied sentences from the built-in vocabulary and grammar."""

from __future__ import annotations

import random

from . import words as W

# Each template is a function of a Random; slots are filled independently so the number of
# distinct sentences is in the billions.
def _np(r: random.Random) -> str:
    if r.random() < 0.5:
        return f"the {r.choice(W.ADJECTIVES)} {r.choice(W.NOUNS)}"
    return f"the {r.choice(W.NOUNS)}"


def _t0(r):
    return f"{_np(r).capitalize()} {r.choice(W.VERBS_PAST)} {_np(r)} {r.choice(W.TIMES)}."


def _t1(r):
    return f"{r.choice(W.NAMES)} {r.choice(W.VERBS_INTRANSITIVE)} {r.choice(W.PREPOSITIONS)} {_np(r)}."


def _t2(r):
    return (f"{r.choice(W.CONNECTIVES)}, {r.choice(W.NAMES)} {r.choice(W.ADVERBS)} "
            f"{r.choice(W.VERBS_PAST)} {_np(r)}.")


def _t3(r):
    return (f"{_np(r).capitalize()} {r.choice(W.PREPOSITIONS)} {_np(r)} was "
            f"{r.choice(W.ADJECTIVES)} and {r.choice(W.ADJECTIVES)}.")


def _t4(r):
    return (f"When {r.choice(W.NAMES)} {r.choice(W.VERBS_INTRANSITIVE)}, {_np(r)} "
            f"{r.choice(W.VERBS_PAST)} {_np(r)} {r.choice(W.ADVERBS)}.")


def _t5(r):
    return (f"Nobody expected {_np(r)} to be so {r.choice(W.ADJECTIVES)} "
            f"{r.choice(W.TIMES)}.")


def _t6(r):
    return (f"{r.choice(W.NAMES)} and {r.choice(W.NAMES)} {r.choice(W.VERBS_PAST)} "
            f"{_np(r)} {r.choice(W.PREPOSITIONS)} {_np(r)}, then {r.choice(W.VERBS_INTRANSITIVE)}.")


def _t7(r):
    return (f"There was {r.choice(['a', 'one'])} {r.choice(W.ADJECTIVES)} {r.choice(W.NOUNS)} "
            f"{r.choice(W.PREPOSITIONS)} {_np(r)}.")


TEMPLATES = [_t0, _t1, _t2, _t3, _t4, _t5, _t6, _t7]


def sentences(rng: random.Random, n: int) -> list[str]:
    """n sentences, each starting with a space so tokenization is stable at unit boundaries."""
    return [" " + rng.choice(TEMPLATES)(rng) for _ in range(n)]
