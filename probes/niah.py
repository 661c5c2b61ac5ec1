"""The needle-in-a-haystack families: niah, multikey, multivalue, multiquery.

A needle reads " The special magic number for <key> is <value>."; the first needle sits at
the requested depth, the others at seeded depths.
"""

from __future__ import annotations

from . import distractors as D
from . import needles as N
from .parts import Parts


def _needle(kind, key, value):
    return f" The special magic {kind} for {key} is {value}."


def _instruction(kind, many):
    if many:
        return (f"Some special magic {kind}s are hidden within the following text. Make sure to "
                f"memorize them. I will quiz you about the {kind}s afterwards.\n\n")
    return (f"A special magic {kind} is hidden within the following text. Make sure to memorize "
            f"it. I will quiz you about the {kind} afterwards.\n\n")


def _ask_one(kind, key):
    return (f"\n\nWhat is the special magic {kind} for {key} mentioned in the provided text?",
            f"\nAnswer: The special magic {kind} for {key} mentioned in the provided text is")


def _and(items):
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _check_count(name, n, lo=1, hi=20):
    if not lo <= n <= hi:
        raise ValueError(f"{name}={n} is out of range; use {lo} to {hi}")


def _near_misses(rng, kind, keys, values, depth, n, placement):
    """n needles with a key that shares a word with the asked key (keys[0]) and a value that
    no other needle has: a literal search for the asked key finds them too."""
    D.check(n, placement)
    if not n:
        return []
    ks = N.similar_keys(rng, keys[0], n, taken=keys)
    vs = [v for v in N.values(rng, kind, n + len(values)) if v not in values][:n]
    return [(_needle(kind, k, v), f) for k, v, f in zip(ks, vs, D.depths(rng, n, depth, placement))]


def niah(ctx, depth, value_kind="number", near_misses=0, placement="spread"):
    rng = ctx.rng
    (key,), (value,) = N.keys(rng, 1), N.values(rng, value_kind, 1)
    q, a = _ask_one(value_kind, key)
    misses = _near_misses(rng, value_kind, [key], [value], depth, near_misses, placement)
    return Parts(_instruction(value_kind, bool(misses)), q, a,
                 [(_needle(value_kind, key, value), depth)] + misses, [value], " " + value,
                 roles=["needle"] + ["similar-key"] * len(misses))


def multikey(ctx, depth, value_kind="number", distractors=3, near_misses=0, placement="spread"):
    rng = ctx.rng
    _check_count("distractors", distractors, 0, 19)
    ks, vs = N.keys(rng, distractors + 1), N.values(rng, value_kind, distractors + 1)
    q, a = _ask_one(value_kind, ks[0])
    needles = [(_needle(value_kind, ks[0], vs[0]), depth)]
    needles += [(_needle(value_kind, k, v), f)
                for k, v, f in zip(ks[1:], vs[1:], N.spread(rng, distractors))]
    misses = _near_misses(rng, value_kind, ks, vs, depth, near_misses, placement)
    return Parts(_instruction(value_kind, True), q, a, needles + misses, [vs[0]], " " + vs[0],
                 roles=["needle"] + ["other-key"] * distractors + ["similar-key"] * len(misses))


def multivalue(ctx, depth, value_kind="number", values=4):
    rng = ctx.rng
    _check_count("values", values)
    (key,), vs = N.keys(rng, 1), N.values(rng, value_kind, values)
    needles = [(_needle(value_kind, key, vs[0]), depth)]
    needles += [(_needle(value_kind, key, v), f) for v, f in zip(vs[1:], N.spread(rng, values - 1))]
    q = f"\n\nWhat are all the special magic {value_kind}s for {key} mentioned in the provided text?"
    a = f"\nAnswer: The special magic {value_kind}s for {key} mentioned in the provided text are"
    return Parts(_instruction(value_kind, True), q, a, needles, vs, " " + ", ".join(vs),
                 answers_by_position=True)


def multiquery(ctx, depth, value_kind="number", queries=4):
    rng = ctx.rng
    _check_count("queries", queries)
    ks, vs = N.keys(rng, queries), N.values(rng, value_kind, queries)
    fracs = [depth] + N.spread(rng, queries - 1)
    needles = [(_needle(value_kind, k, v), f) for k, v, f in zip(ks, vs, fracs)]
    q = (f"\n\nWhat are all the special magic {value_kind}s for {_and(ks)} mentioned in the "
         "provided text?")
    a = f"\nAnswer: The special magic {value_kind}s for {_and(ks)} mentioned in the provided text are"
    return Parts(_instruction(value_kind, True), q, a, needles, vs, " " + ", ".join(vs))
