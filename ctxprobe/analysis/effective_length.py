"""Effective context length, two readings side by side.

Threshold rule (RULER's): the largest tested length L such that the mean score at every tested
length <= L is >= the cutoff. The cutoff is `threshold` (absolute), or with relative=True,
threshold x the mean score at the shortest tested lengths (the model's own short-context score).

Logistic curve: score ~ sigmoid(a + b * (log2(length) - centre)), fitted by Newton's method on
the binomial log-likelihood (fractional scores allowed, i.e. quasi-binomial), each length
weighted by its cell count, with a small ridge penalty so that a perfect step (all pass, then
all fail) still gives a finite, steep curve instead of diverging. L50 and L85 are the lengths
where the curve crosses 0.5 and the cutoff (times the short-length mean with relative=True for
L50 too). Their 95% intervals come from a bootstrap that resamples cells within each length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHORT_LENGTHS = 2  # how many of the shortest tested lengths define the short-context score
RIDGE = 1e-2
NEWTON_STEPS = 60


@dataclass(frozen=True)
class ThresholdLength:
    length: int | None  # None: even the shortest tested length is below the cutoff
    cutoff: float       # the absolute mean score every length up to `length` reached
    relative: bool


@dataclass(frozen=True)
class LogisticFit:
    a: float
    b: float        # slope per doubling of length; < 0 when the score falls with length
    centre: float   # log2 length the fit is centred on

    def predict(self, lengths) -> np.ndarray:
        x = np.log2(np.asarray(lengths, dtype=float)) - self.centre
        return 1.0 / (1.0 + np.exp(-(self.a + self.b * x)))

    def length_at(self, target: float) -> float:
        """Length where the curve falls through `target`; inf if it never falls below it."""
        return float(_lengths_at(np.array([self.a]), np.array([self.b]), self.centre, target)[0])


@dataclass(frozen=True)
class EffectiveLength:
    threshold: ThresholdLength
    fit: LogisticFit | None           # None with one tested length or a zero cutoff
    l50: float | None
    l50_ci: tuple[float, float] | None
    l85: float | None                 # at the cutoff, which is 0.85 only by default
    l85_ci: tuple[float, float] | None
    tested: tuple[int, int]           # shortest and longest tested length


def short_score(means, short: int = SHORT_LENGTHS) -> float:
    return float(np.mean(np.asarray(means, dtype=float)[:short]))


def threshold_length(lengths, means, *, threshold: float = 0.85, relative: bool = False,
                     short: int = SHORT_LENGTHS) -> ThresholdLength:
    """lengths ascending, means the mean score at each; see the module docstring."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold {threshold} is not in (0, 1]: use e.g. 0.85")
    means = np.asarray(means, dtype=float)
    cutoff = threshold * short_score(means, short) if relative else threshold
    best = None
    for length, mean in zip(lengths, means if cutoff > 0 else []):  # a zero short score: no reading
        if mean < cutoff - 1e-12:
            break
        best = int(length)
    return ThresholdLength(best, float(cutoff), relative)


def fit_logistic(lengths, means, counts) -> LogisticFit:
    """One curve through mean scores at each length, weighted by the number of cells there."""
    x = np.log2(np.asarray(lengths, dtype=float))
    centre = float(x.mean())
    a, b = _newton(x - centre, np.asarray(means, dtype=float)[None, :], np.asarray(counts, dtype=float))
    return LogisticFit(float(a[0]), float(b[0]), centre)


def effective_length(values_by_length: dict[int, np.ndarray], *, threshold: float = 0.85,
                     relative: bool = False, n_boot: int = 200, seed: int = 0) -> EffectiveLength:
    """values_by_length: {length: scores of every cell at that length} for one family."""
    if not values_by_length:
        raise ValueError("no scored cells to compute an effective length from: is the run empty?")
    lengths = sorted(values_by_length)
    values = [np.asarray(values_by_length[x], dtype=float) for x in lengths]
    means = np.array([v.mean() for v in values])
    counts = np.array([v.size for v in values], dtype=float)
    rule = threshold_length(lengths, means, threshold=threshold, relative=relative)
    tested = (int(lengths[0]), int(lengths[-1]))
    half = 0.5 * short_score(means) if relative else 0.5
    if rule.cutoff <= 0 or half <= 0 or len(lengths) < 2:  # nothing to fit a fall-off to
        return EffectiveLength(rule, None, None, None, None, None, tested)

    fit = fit_logistic(lengths, means, counts)
    # Bootstrap: resample the cells at each length (with replacement), refit all at once.
    rng = np.random.default_rng(seed)
    boot_means = np.stack([v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
                           for v in values], axis=1)                      # [n_boot, L]
    x = np.log2(np.asarray(lengths, dtype=float)) - fit.centre
    a, b = _newton(x, boot_means, counts)
    ci = {}
    for name, target in (("l50", half), ("l85", rule.cutoff)):
        boot = np.sort(_lengths_at(a, b, fit.centre, target))
        ci[name] = _bracketed(lengths, values, fit.length_at(target),
                              (float(boot[int(0.025 * (n_boot - 1))]),
                               float(boot[int(np.ceil(0.975 * (n_boot - 1)))])))
    return EffectiveLength(rule, fit, fit.length_at(half), ci["l50"], fit.length_at(rule.cutoff),
                           ci["l85"], tested)


def _bracketed(lengths, values, value: float, ci: tuple[float, float]) -> tuple[float, float]:
    """ci, widened to the two tested lengths around `value` when the cells at each of them are
    all alike (e.g. all pass, then all fail): resampling cannot move the crossing between them
    then, and where the curve crosses is the ridge's guess, not the data's. The data place it
    only somewhere between those two lengths."""
    for k in range(len(lengths) - 1):
        if lengths[k] <= value <= lengths[k + 1]:
            if np.ptp(values[k]) == 0 and np.ptp(values[k + 1]) == 0:
                return min(ci[0], float(lengths[k])), max(ci[1], float(lengths[k + 1]))
            break
    return ci


def describe_length(value: float | None, tested: tuple[int, int]) -> str:
    """A fitted length for a table: '23.1K', or '>1M' / '<1K' outside the tested range."""
    from ctxprobe.plots.labels import approx_length_label, length_label

    if value is None:
        return "-"
    if value > tested[1]:
        return ">" + length_label(tested[1])
    if value < tested[0]:
        return "<" + length_label(tested[0])
    if float(value).is_integer():  # a tested length bounding an interval: its round name
        return length_label(value)
    return approx_length_label(value)


def describe_with_ci(eff: EffectiveLength, value: float | None, ci) -> str:
    """'16.0K [12.6K, 21.1K]' for a fitted length and its interval; '-' when there is none."""
    if value is None:
        return "-"
    text = describe_length(value, eff.tested)
    if ci is not None:
        text += f" [{describe_length(ci[0], eff.tested)}, {describe_length(ci[1], eff.tested)}]"
    return text


def _newton(x_L, y_BL, w_L):
    """Batched ridge-penalised logistic regression: B curves over the same L points -> (a_B, b_B)."""
    n_curves = y_BL.shape[0]
    theta = np.zeros((n_curves, 2))
    features = np.stack([np.ones_like(x_L), x_L], axis=1)                 # [L, 2]
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(theta @ features.T)))                   # [B, L]
        grad = ((y_BL - p) * w_L) @ features - RIDGE * theta               # [B, 2]
        curvature = (p * (1 - p) * w_L)[:, :, None, None] * (features[:, :, None] * features[:, None, :])
        hessian = curvature.sum(axis=1) + RIDGE * np.eye(2)                # [B, 2, 2] (negated)
        step = np.linalg.solve(hessian, grad[:, :, None])[:, :, 0]
        # Cap the step: the log-likelihood is concave, but a full Newton step from far away can
        # overshoot into the flat region of the sigmoid.
        step *= np.minimum(1.0, 4.0 / np.maximum(np.abs(step).max(axis=1, keepdims=True), 1e-12))
        theta += step
        if np.abs(step).max() < 1e-9:
            break
    return theta[:, 0], theta[:, 1]


def _lengths_at(a_B, b_B, centre, target):
    """Where sigmoid(a + b x) crosses target, per curve; inf when the curve does not fall past it."""
    target = float(np.clip(target, 1e-6, 1 - 1e-6))
    logit = np.log(target / (1 - target))
    falling = b_B < -1e-9
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        x = np.where(falling, (logit - a_B) / np.where(falling, b_B, -1.0), np.inf)
        lengths = np.exp2(np.minimum(x + centre, 1e3))
    # A flat or rising curve: "never falls below" if it is above target, else "never reached".
    flat_value = 1.0 / (1.0 + np.exp(-a_B))
    return np.where(falling, lengths, np.where(flat_value >= target, np.inf, 0.0))


def effective_lengths(cells, *, threshold: float = 0.85, relative: bool = False,
                      n_boot: int = 200) -> dict[str, EffectiveLength]:
    """{family: EffectiveLength} over a run's stored cells (errored cells left out)."""
    from ctxprobe.analysis.summary import families, usable, values_by_length

    cells = usable(cells)
    return {f: effective_length(values_by_length(cells, f), threshold=threshold,
                                relative=relative, n_boot=n_boot) for f in families(cells)}


# Hard families (probes whose question shares no words with the needle, multi-round
# coreference) score lower even at short lengths, so an absolute cutoff says little about where
# *their* context stops working. NoLiMa's rule reads them relative to the model's own score at
# the shortest lengths: the longest length that keeps `threshold` of it.
RELATIVE_RULE = "relative: score >= {:.0%} of its own mean score at the {} shortest lengths (NoLiMa's rule)"
ABSOLUTE_RULE = "absolute: score >= {:.0%}"


def reads_relative(family: str) -> bool:
    """Whether `family` gets the relative reading beside the absolute one (its probes.FAMILIES
    entry says so: every family whose literal path is closed, and their literal controls)."""
    from ctxprobe.probes import FAMILIES

    fam = FAMILIES.get(family)
    return bool(fam is not None and fam.relative)


def both_readings(lengths, means, *, threshold: float = 0.85,
                  short: int = SHORT_LENGTHS) -> tuple[ThresholdLength, ThresholdLength]:
    """(absolute, relative) threshold readings of one family's mean score per length."""
    return (threshold_length(lengths, means, threshold=threshold, short=short),
            threshold_length(lengths, means, threshold=threshold, relative=True, short=short))
