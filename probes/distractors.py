"""Near-miss distractors: needles that share the asked needle's template but not its answer.

Chroma's context-rot study found that a sentence which almost matches the question costs
models more as the context grows; RULER's multikey only adds needles with unrelated keys. Each
retrieval family makes its own near misses (a similar key, a lure that names the question's
target, the same kind of entity said of another character); this file holds what they share:
the knobs' checks and where the near misses go.

placement, relative to the asked needle's depth d (fractions of the haystack):
  spread  anywhere, uniformly
  near    within 5% of d
  before  between the start and d
  after   between d and the end
"""

from __future__ import annotations

import random

PLACEMENTS = ("spread", "near", "before", "after")
MAX_NEAR_MISSES = 20
NEAR = 0.05


def check(near_misses: int, placement: str) -> None:
    if not 0 <= near_misses <= MAX_NEAR_MISSES:
        raise ValueError(f"near_misses={near_misses} is out of range; use 0 to {MAX_NEAR_MISSES}")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement={placement!r} is not known; choose one of: {', '.join(PLACEMENTS)}")


def depths(rng: random.Random, n: int, depth: float, placement: str) -> list[float]:
    """n seeded depth fractions for near misses around a needle at `depth` (a fraction)."""
    check(n, placement)
    lo, hi = {"spread": (0.0, 1.0), "near": (max(0.0, depth - NEAR), min(1.0, depth + NEAR)),
              "before": (0.0, depth), "after": (depth, 1.0)}[placement]
    return sorted(rng.uniform(lo, hi) for _ in range(n))
