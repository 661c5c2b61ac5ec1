"""kv: a JSON object of UUID key-value pairs; one key is asked ("lost in the middle").

Layout of the prompt (every key distinct at any length; the object is valid JSON):

    instruction  ...JSON data:\n{
    haystack      "k0": "v0", "k1": "v1", ... (the asked pair at the requested depth) ...
    question      "kc": "<hex>"\n}\n\nKey: "<asked key>"
    answer prefix \nAnswer: The value associated with the specified key is

The haystack is whole pairs, each with its comma; the question opens with the closer, the
object's last pair (no comma), whose value length is chosen so that the prompt is exactly
`length` tokens: no partial pair, no re-tokenization of the haystack.

The stream of a (seed, sample) is blocks of BLOCK pairs: block b is a seeded permutation of
the seed's pairs [b * BLOCK, (b + 1) * BLOCK), so probes that fit in one block all draw on the
same BLOCK pairs (tokenized once per seed), longer ones on new pairs, never one twice. Pair i's
UUIDs are a function of (seed, i) with keys injective in i (kv_pairs.py); the asked pair and
the closer take keys from other index domains. The stream does not depend on length or depth,
so cells of one sample share a context prefix. The user's haystack option does not apply.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from . import kv_pairs as P
from .haystacks import UnitPool, derive_seed
from .parts import Parts
from .tokenizers import ByteTokenizer

BLOCK = 16384          # pairs per shuffled block of the stream
FIT_HEX = 256          # longest value of the closer, hex digits
_FIT_TRIES = 8         # stream cut points tried for the closer (one pair given back each)


class PairPool(UnitPool):
    """A UnitPool that grows: the seed's pairs, block by block as streams reach them. Pair i
    of block b sits at slot block_start[b] + i - b * block."""

    def __init__(self, seed: int, tokenizer, block: int):
        super().__init__([], tokenizer)
        self.seed, self.block = seed, block
        self.size = 0                      # slots in use; the arrays may be longer
        self.block_start: list[int] = []   # first slot of each generated block

    def _add(self, texts: list[str], byte_rows: np.ndarray | None = None) -> int:
        """Append units; returns the first new slot. byte_rows: the units' bytes as ids."""
        start, n = self.size, len(texts)
        if start + n > len(self.lengths):
            cap = max(start + n, 2 * len(self.lengths), 1024)
            self.texts = np.concatenate([self.texts, np.empty(cap - len(self.texts), dtype=object)])
            self.lengths = np.concatenate([self.lengths, np.full(cap - len(self.lengths), -1)])
            self.starts = np.concatenate([self.starts, np.zeros(cap - len(self.starts), np.int64)])
        self.texts[start:start + n] = texts
        if byte_rows is not None:          # the byte tokenizer's ids are the text's bytes
            width = byte_rows.shape[1]
            self.starts[start:start + n] = len(self.flat) + width * np.arange(n)
            self.lengths[start:start + n] = width
            self.flat = np.concatenate([self.flat, byte_rows.reshape(-1).astype(np.int32)])
        self.size += n
        return start

    def block_slots(self, b: int) -> int:
        """The first slot of block b, generating blocks up to b."""
        while len(self.block_start) <= b:
            first = len(self.block_start) * self.block
            rows = P.pair_rows(self.seed, np.arange(first, first + self.block, dtype=np.uint64))
            fast = isinstance(self.tokenizer, ByteTokenizer)
            self.block_start.append(self._add(P.pair_texts(rows), rows if fast else None))
        return self.block_start[b]


class Closer:
    """The object's last pair, which has no comma: ' "<key>": "<value>"', sized to end the
    haystack at a whole pair. Size s: s <= 36 keeps the key's first s characters and an empty
    value (tiny prompts); s > 36 keeps the whole key and s - 36 hex digits of value. Token
    counts are of the whole suffix (closer + rest of the question + answer prefix), so no
    additivity is assumed; memoized, a few per probe by bisection."""

    def __init__(self, tokenizer, seed: int, sample: int, rest: str):
        self.tokenizer, self.rest = tokenizer, rest
        self.key = P.key_and_value(seed, P.FIT, sample)[0]
        first = (P.FIT << P.DOMAIN_SHIFT) | (sample << 8)     # FIT_HEX / 32 UUIDs of digits
        index = np.arange(first, first + FIT_HEX // 32, dtype=np.uint64)
        self.digits = P.hex_rows(*P.uuid_words(seed, "fit", index)).tobytes().decode("ascii")
        self._counts: dict[int, int] = {}

    def text(self, s: int) -> str:
        if s <= 36:
            return f' "{self.key[:s]}": ""'
        return f' "{self.key}": "{self.digits[:s - 36]}"'

    def count(self, s: int) -> int:
        """Tokens of the suffix that starts with closer s."""
        if s not in self._counts:
            self._counts[s] = len(self.tokenizer.encode_units([self.text(s) + self.rest])[0])
        return self._counts[s]

    def size_for(self, n: int, lo: int, hi: int) -> int | None:
        """A size in [lo, hi] whose suffix is exactly n tokens, or None. Counts grow with the
        size, not always by one, so bisect and then look at the neighbours."""
        if not self.count(lo) <= n <= self.count(hi):
            return None
        a, b = lo, hi
        while a < b:                         # smallest s with count(s) >= n, if monotone
            mid = (a + b) // 2
            a, b = (mid + 1, b) if self.count(mid) < n else (a, mid)
        for s in sorted(range(max(lo, a - 3), min(hi, a + 3) + 1), key=lambda s: abs(s - a)):
            if self.count(s) == n:
                return s
        return None


class PairStream:
    """The kv haystack of one (seed, sample): the stream of whole pairs, each with its comma."""

    spec = "kv"

    def __init__(self, pool: PairPool):
        self.pool = pool

    def stream(self, seed: int, sample: int, n: int) -> np.ndarray:
        """Slots of the first n stream pairs: block permutations, never a pair twice."""
        B = self.pool.block
        parts = [self.pool.block_slots(b)
                 + np.random.default_rng(derive_seed("kv-order", seed, sample, b)).permutation(B)
                 for b in range(-(-n // B))]
        return np.concatenate(parts)[:n] if parts else np.zeros(0, dtype=np.int64)

    def order_covering(self, seed: int, sample: int, budget: int, extra: int) -> np.ndarray:
        """The first stream pairs whose tokens exceed `budget`, plus `extra` more."""
        mean = max(float(self.pool.lengths_of(self.stream(seed, sample, 64)).mean()), 1.0)
        n = int(budget / mean) + extra + 1
        while True:
            order = self.stream(seed, sample, n)
            cum = np.cumsum(self.pool.lengths_of(order))
            k = int(np.searchsorted(cum, budget, side="right"))
            if n - k >= extra:
                return order
            n = int(n * 1.25) + extra + 1

    def closer_for(self, closer: Closer, seed: int, sample: int, free: int) -> str:
        """The closer whose suffix, after k whole pairs, fills `free` tokens exactly (free:
        the prompt's tokens less the instruction and the needle)."""
        full = closer.count(36)              # smallest suffix with a whole UUID key
        if free < full:                      # no room for a whole key: a short one
            s = closer.size_for(free, 0, 36)
            if s is None and free >= closer.count(0):
                raise ValueError(f"could not close the kv object at exactly {free} tokens with "
                                 f"tokenizer {self.pool.tokenizer.name}; try another length")
            return closer.text(0 if s is None else s)  # too short: assemble names the minimum
        order = self.order_covering(seed, sample, free - full, 1)
        cum = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(self.pool.lengths_of(order), out=cum[1:])
        k_top = int(np.searchsorted(cum, free - full, side="right")) - 1
        for k in range(k_top, max(-1, k_top - _FIT_TRIES), -1):
            s = closer.size_for(free - int(cum[k]), 36, 36 + FIT_HEX)
            if s is not None:
                return closer.text(s)
        raise ValueError(f"could not close the kv object at exactly {free} tokens with tokenizer "
                         f"{self.pool.tokenizer.name}; try another length")


@lru_cache(maxsize=4)
def _pool(seed: int, fingerprint: str, block: int) -> PairPool:
    return PairPool(seed, None, block)


def pair_stream(seed: int, tokenizer) -> PairStream:
    pool = _pool(seed, tokenizer.fingerprint, BLOCK)
    pool.tokenizer = tokenizer    # the latest object with this fingerprint (see pool_for)
    return PairStream(pool)


def kv(ctx, depth):
    tok = ctx.tokenizer
    hay = pair_stream(ctx.seed, tok)
    key, value = P.key_and_value(ctx.seed, P.ASKED, ctx.rng.getrandbits(P.DOMAIN_SHIFT))
    instruction = ("Extract the value corresponding to the specified key in the JSON object "
                   "below.\n\nJSON data:\n{")
    needle = f' "{key}": "{value}",'
    question_rest = f'\n}}\n\nKey: "{key}"'
    answer_prefix = "\nAnswer: The value associated with the specified key is"
    free = ctx.length - len(tok.encode(instruction)) - len(tok.encode_units([needle])[0])
    closer = Closer(tok, ctx.seed, ctx.sample, question_rest + answer_prefix)
    return Parts(
        instruction=instruction,
        question=hay.closer_for(closer, ctx.seed, ctx.sample, free) + question_rest,
        answer_prefix=answer_prefix,
        needles=[(needle, depth)],
        answers=[value],
        answer_text=" " + value,
        haystack=hay,
    )
