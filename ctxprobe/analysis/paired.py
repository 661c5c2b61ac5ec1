"""Paired tests of "B is worse than A" on cells that share seed and probe, and Holm's correction.

Both tests are one-sided: a regression gate asks whether B got worse, not whether it changed.
- Binary scores: exact McNemar. Only discordant pairs carry information; under "no change"
  each is equally likely to favour A or B, so the count favouring A is Binomial(d, 1/2).
- Graded values (log-probabilities, fractional scores): a studentized paired bootstrap
  (bootstrap-t) of the mean difference.
- Holm's step-down correction across all (family, length) cells controls the family-wise error
  rate (the chance of one or more false regressions in a comparison) at alpha.
"""

from __future__ import annotations

from math import comb

import numpy as np


def mcnemar_worse(a, b) -> float:
    """P-value that B (0/1 per pair) is worse than A; 1.0 when no pair disagrees."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in shape: {a.shape} vs {b.shape}")
    a_only = int(np.sum((a == 1) & (b == 0)))  # A right, B wrong
    b_only = int(np.sum((a == 0) & (b == 1)))
    discordant = a_only + b_only
    if discordant == 0:
        return 1.0
    # P(X >= a_only) for X ~ Binomial(discordant, 1/2), in exact integer arithmetic.
    tail = sum(comb(discordant, k) for k in range(a_only, discordant + 1))
    return min(1.0, tail / 2**discordant)


def bootstrap_worse(a, b, n_boot: int = 2000, seed: int = 0) -> float:
    """P-value that mean(b - a) < 0, from a paired (studentized) bootstrap of the differences.

    Studentized (bootstrap-t) rather than percentile: with tens of pairs the percentile
    bootstrap's tails are too thin, which Holm's small per-cell thresholds would expose.
    Floored at 2**-n, the smallest p-value a sign-flip test on n pairs can reach: with very
    few pairs the bootstrap distribution is degenerate and would claim far more certainty.
    """
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    n = diff.size
    if n == 0 or np.all(diff == diff[0]) and diff[0] >= 0:
        return 1.0
    floor = 0.5**n
    if n < 2 or np.all(diff == diff[0]):  # a constant drop: no spread to studentize by
        return float(max(floor, 1 / (n_boot + 1)))
    observed = diff.mean()
    t_observed = observed / (diff.std(ddof=1) / np.sqrt(n))
    rng = np.random.default_rng(seed)
    resampled = diff[rng.integers(0, n, size=(n_boot, n))]                # [n_boot, n]
    spread = resampled.std(axis=1, ddof=1) / np.sqrt(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_boot = np.nan_to_num((resampled.mean(axis=1) - observed) / spread, nan=0.0)
    return float(max((1 + np.sum(t_boot <= t_observed)) / (n_boot + 1), floor))


def holm(pvalues) -> np.ndarray:
    """Holm-adjusted p-values: reject where adjusted < alpha, family-wise error <= alpha."""
    p = np.asarray(pvalues, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted
