"""kv: a JSON object of UUID key-value pairs; one key is asked ("lost in the middle").

The pairs are the haystack: a seeded pool of KV_POOL pairs per seed, shuffled per sample
(pairs repeat beyond the pool, about 0.8M tokens with a byte-level BPE). The asked pair is the
needle, at the requested depth. The user's haystack option does not apply.
"""

from __future__ import annotations

import random
import uuid
from functools import lru_cache

from probes.haystacks import Haystack, derive_seed, pool_for
from probes.parts import Parts

KV_POOL = 16384


def _uuid(rng):
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _pair(key, value):
    return f' "{key}": "{value}",'


@lru_cache(maxsize=8)
def _pairs(seed: int) -> tuple[str, ...]:
    rng = random.Random(derive_seed("kv-pool", seed))
    return tuple(_pair(_uuid(rng), _uuid(rng)) for _ in range(KV_POOL))


def kv(ctx, depth):
    key, value = _uuid(ctx.rng), _uuid(ctx.rng)
    hay = Haystack("kv", pool_for(_pairs(ctx.seed), ctx.tokenizer), "shuffle")
    return Parts(
        instruction="Extract the value corresponding to the specified key in the JSON object "
                    "below.\n\nJSON data:\n{",
        question=f'\n}}\n\nKey: "{key}"\nWhat is the value corresponding to this key?',
        answer_prefix="\nAnswer: The value associated with the specified key is",
        needles=[(_pair(key, value), depth)],
        answers=[value],
        answer_text=" " + value,
        haystack=hay,
    )
