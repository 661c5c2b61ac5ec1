"""Needle keys and values: distinct, seeded, from the built-in word lists."""

from __future__ import annotations

import random
import uuid

from . import words as W

VALUE_KINDS = ("number", "word", "uuid")


def keys(rng: random.Random, n: int) -> list[str]:
    """n distinct "adjective-noun" keys."""
    pairs = [(a, b) for a in W.KEY_ADJECTIVES for b in W.KEY_NOUNS]
    return [f"{a}-{b}" for a, b in rng.sample(pairs, n)]


def similar_keys(rng: random.Random, key: str, n: int, taken=()) -> list[str]:
    """n distinct keys that share one word with `key` ("quiet-heron" -> "quiet-raven",
    "misty-heron"), none of them in `taken`: near misses for a literal search."""
    adjective, noun = key.split("-")
    pool = [f"{adjective}-{b}" for b in W.KEY_NOUNS if b != noun]
    pool += [f"{a}-{noun}" for a in W.KEY_ADJECTIVES if a != adjective]
    pool = [k for k in pool if k not in set(taken)]
    if n > len(pool):
        raise ValueError(f"at most {len(pool)} similar keys; asked for {n}")
    return rng.sample(pool, n)


def values(rng: random.Random, kind: str, n: int) -> list[str]:
    """n distinct values of one kind: 7-digit numbers, words or UUIDs."""
    if kind == "number":
        return [str(v) for v in rng.sample(range(1_000_000, 10_000_000), n)]
    if kind == "word":
        if n > len(W.VALUE_WORDS):
            raise ValueError(f"at most {len(W.VALUE_WORDS)} word values per probe; asked for {n}")
        return rng.sample(W.VALUE_WORDS, n)
    if kind == "uuid":
        return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]
    raise ValueError(f"unknown value_kind {kind!r}; choose one of: {', '.join(VALUE_KINDS)}")


def spread(rng: random.Random, n: int, lo: float = 0.0, hi: float = 1.0) -> list[float]:
    """n seeded depth fractions in [lo, hi], sorted."""
    return sorted(rng.uniform(lo, hi) for _ in range(n))
