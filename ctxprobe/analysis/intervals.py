"""95% intervals for a mean score: Wilson for binary scores, normal for graded ones."""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def is_binary(values) -> bool:
    values = np.asarray(values, dtype=float)
    return bool(np.all((values == 0) | (values == 1)))


def mean_interval(values, lower=0.0, upper=1.0) -> tuple[float, float]:
    """Wilson for 0/1 values; otherwise mean +- z * standard error, clipped to [lower, upper].

    A single graded value has no spread to estimate, so its interval is the whole range.
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return lower, upper
    if is_binary(values):
        return wilson(float(values.sum()), values.size)
    if values.size < 2:
        return lower, upper
    half = Z95 * values.std(ddof=1) / math.sqrt(values.size)
    return max(lower, values.mean() - half), min(upper, values.mean() + half)
