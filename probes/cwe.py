"""cwe: common-words extraction. A long word list in which `common` words each appear c times
and every other word at most about c/3 times; the answer is the common words.

The word list fills the haystack exactly; depth does not apply (no needles). The user's
haystack option does not apply either.
"""

from __future__ import annotations

import numpy as np

from . import words as W
from .haystacks import derive_seed, pool_for
from .parts import Parts

_TEXTS = tuple(" " + w for w in W.CWE_WORDS)


class WordListHaystack:
    """A word pool whose stream is built for the token budget: common words c >= 3u + 1 times
    each, the others u or u + 1 times, shuffled, then uncommon words as tail candidates."""

    spec = "cwe"

    def __init__(self, pool, common: np.ndarray, seed: int):
        self.pool, self.common, self.seed = pool, common, seed
        self.uncommon = np.setdiff1d(np.arange(len(pool)), common)
        self.common_freq = None

    def minimum_budget(self) -> int:
        return 4 * int(self.pool.lengths_of(self.common).sum())

    def order_covering(self, seed, sample, budget, extra):
        lens = self.pool.lengths_of(np.arange(len(self.pool)))
        rng = np.random.default_rng(self.seed)
        t_common, t_uncommon = int(lens[self.common].sum()), int(lens[self.uncommon].sum())
        assert budget >= 4 * t_common, (budget, t_common)
        # The largest u with (3u + 1) common rounds and u uncommon rounds within the budget.
        u = max(1, (budget - t_common) // (t_uncommon + 3 * t_common))
        c = 3 * u + 1
        left = budget - c * t_common
        shuffled = rng.permutation(self.uncommon)
        m = int(np.searchsorted(np.cumsum(lens[shuffled]) * u, left, side="right"))
        left -= u * int(lens[shuffled[:m]].sum())
        c += left // t_common                       # spare whole rounds go to the common words
        left -= (c - 3 * u - 1) * t_common
        self.common_freq = c
        # Then one more of each uncommon word until one won't fit: counts stay <= u + 1.
        rest = np.concatenate([shuffled[m:], shuffled[:m]])
        n_fill = int(np.searchsorted(np.cumsum(lens[rest]), left, side="right"))
        occ = np.concatenate([np.repeat(self.common, c), np.repeat(shuffled[:m], u), rest[:n_fill]])
        # The units after the budget (tail candidates) are uncommon words too.
        extras = np.resize(np.concatenate([rest[n_fill:], rest[:n_fill]]), extra + 1)
        return np.concatenate([rng.permutation(occ), extras]).astype(np.int64)


def cwe(ctx, depth, common=10):
    if not 1 <= common <= 50:
        raise ValueError(f"common={common} is out of range; use 1 to 50")
    pool = pool_for(_TEXTS, ctx.tokenizer)
    rng = np.random.default_rng(derive_seed("cwe-words", ctx.seed, ctx.sample))
    chosen = np.sort(rng.choice(len(pool), size=common, replace=False))
    hay = WordListHaystack(pool, chosen, derive_seed("cwe-list", ctx.seed, ctx.sample, ctx.length))
    answers = [_TEXTS[i].strip() for i in chosen]
    return Parts(
        instruction="Below is a list of words. Some of them appear more often than others. "
                    "Memorize the ones that appear most often.\n\nWords:",
        question=f"\n\nQuestion: What are the {common} most common words in the list above?",
        answer_prefix=f"\nAnswer: The {common} most common words in the list are:",
        needles=[],
        answers=answers,
        answer_text=" " + ", ".join(answers),
        haystack=hay,
        meta={"min_haystack": hay.minimum_budget()},
    )
