"""Paired regression statistics: McNemar, paired bootstrap, Holm, and the run comparison."""

import itertools
import math

import numpy as np
import pytest

from ctxprobe.analysis.compare import compare, pair_cells
from ctxprobe.analysis.paired import bootstrap_worse, holm, mcnemar_worse
from ctxprobe.errors import UserError

FAMILIES = ("niah", "multi")
LENGTHS = (1024, 2048, 4096, 8192, 16384)
DEPTHS = (0.0, 50.0, 100.0)


def _mcnemar_by_enumeration(a, b):
    """Slow reference: under the null each discordant pair favours A or B with probability 1/2;
    enumerate every assignment and count those at least as bad for B as the one observed."""
    a_only = sum(1 for x, y in zip(a, b) if x == 1 and y == 0)
    d = a_only + sum(1 for x, y in zip(a, b) if x == 0 and y == 1)
    if d == 0:
        return 1.0
    worse = sum(1 for flips in itertools.product((0, 1), repeat=d) if sum(flips) >= a_only)
    return worse / 2**d


def test_mcnemar_matches_enumeration():
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(1, 14))
        a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
        assert mcnemar_worse(a, b) == pytest.approx(_mcnemar_by_enumeration(a, b), abs=1e-12)


def test_mcnemar_direction_and_ties():
    assert mcnemar_worse([1, 1, 1, 1, 1], [0, 0, 0, 0, 0]) == pytest.approx(1 / 32)
    assert mcnemar_worse([0, 0, 0, 0, 0], [1, 1, 1, 1, 1]) == 1.0  # B better: not "worse"
    assert mcnemar_worse([1, 0, 1], [1, 0, 1]) == 1.0
    # Large counts stay exact (integer arithmetic) and tiny.
    assert mcnemar_worse(np.ones(1000), np.zeros(1000)) == pytest.approx(2.0**-1000)


def _holm_by_definition(p, alpha):
    """Slow reference: Holm's step-down procedure as a reject/accept decision."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    rejected = set()
    for rank, i in enumerate(order):
        if p[i] >= alpha / (len(p) - rank):
            break
        rejected.add(i)
    return rejected


def test_holm_matches_step_down_definition():
    rng = np.random.default_rng(1)
    for _ in range(200):
        p = rng.random(int(rng.integers(1, 12))) ** 3
        adjusted = holm(p)
        assert np.all(adjusted >= p) and np.all(adjusted <= 1)
        for alpha in (0.01, 0.05, 0.2):
            assert {i for i in range(len(p)) if adjusted[i] < alpha} == _holm_by_definition(p, alpha)


def test_bootstrap_detects_a_consistent_drop_and_not_noise():
    rng = np.random.default_rng(2)
    a = rng.normal(-2.0, 0.5, 40)
    assert bootstrap_worse(a, a - 0.5) < 0.01
    assert bootstrap_worse(a, a + 0.5) == 1.0
    assert bootstrap_worse(a, a) == 1.0
    assert bootstrap_worse(a, a + rng.normal(0, 0.5, 40)) > 0.01
    # Floored at 2^-n: one pair can never be significant at 0.05.
    assert bootstrap_worse([0.0], [-3.0]) == 0.5


def _run(rng, p_by_length, copy_from=None, agree=0.8):
    """Binary cells; with copy_from, each cell repeats the partner's outcome with prob `agree`
    (paired models mostly agree on a probe) and is otherwise a fresh draw at the same rate."""
    cells = []
    for i, (family, length, depth, sample) in enumerate(
            itertools.product(FAMILIES, LENGTHS, DEPTHS, range(8))):
        p = p_by_length[length]
        fresh = float(rng.random() < p)
        score = fresh if copy_from is None or rng.random() > agree else copy_from[i]["score"]
        cells.append(dict(family=family, length=length, depth=depth, sample=sample, seed=7,
                          probe_hash=f"h{i}", score=score, logprob=None, error=None))
    return cells


RATES = {1024: 0.95, 2048: 0.9, 4096: 0.8, 8192: 0.6, 16384: 0.4}


def test_identical_runs_show_no_regression():
    a = _run(np.random.default_rng(3), RATES)
    result = compare(a, [dict(c) for c in a])
    assert len(result.cells) == len(FAMILIES) * len(LENGTHS)
    assert not result.regressions and all(c.p == 1.0 and c.delta == 0 for c in result.cells)
    assert result.unpaired_a == result.unpaired_b == 0


def test_drop_planted_at_one_length_is_found_there_only():
    rng = np.random.default_rng(4)
    a = _run(rng, RATES)
    b = _run(rng, RATES, copy_from=a, agree=1.0)
    for c in b:  # B loses 8K for niah: every correct answer there becomes wrong
        if c["family"] == "niah" and c["length"] == 8192:
            c["score"] = 0.0
    result = compare(a, b)
    assert [(c.family, c.length) for c in result.regressions] == [("niah", 8192)]
    hit = result.regressions[0]
    assert hit.test == "mcnemar" and hit.p_adjusted < 0.05 and hit.delta < -0.05


def test_false_regression_rate_under_the_null_stays_below_alpha():
    rng = np.random.default_rng(5)
    trials, alpha, false = 300, 0.05, 0
    for _ in range(trials):
        a = _run(rng, RATES)
        b = _run(rng, RATES, copy_from=a, agree=0.0)  # independent: the most discordant pairs
        false += bool(compare(a, b, alpha=alpha, min_drop=0.0).regressions)
    # Exact McNemar + Holm is conservative: the rate sits well under alpha, not just at it.
    assert false / trials <= alpha


def test_false_regression_rate_for_logprobs_stays_at_alpha():
    rng = np.random.default_rng(6)
    trials, alpha, false = 400, 0.05, 0
    base = rng.normal(-1.5, 1.0, len(FAMILIES) * len(LENGTHS) * len(DEPTHS) * 8)
    cells = _run(rng, RATES)
    for trial in range(trials):
        runs = [[dict(c, logprob=float(mean + rng.normal(0, 0.3))) for c, mean in zip(cells, base)]
                for _ in range(2)]
        result = compare(*runs, metric="logprob", alpha=alpha, min_drop=0.0, n_boot=1000, seed=trial)
        assert all(c.test == "bootstrap" and c.pairs == 24 for c in result.cells)
        false += bool(result.regressions)
    # The bootstrap is approximate (a 600-trial run measured 4.7%), so allow two standard
    # errors of the estimated rate above alpha rather than demanding <= alpha by luck.
    assert false / trials <= alpha + 2 * math.sqrt(alpha * (1 - alpha) / trials)


def test_min_drop_hides_small_significant_drops():
    a = [dict(family="f", length=1024, depth=0.0, sample=s, seed=0, probe_hash=str(s),
              score=1.0, error=None) for s in range(400)]
    b = [dict(c, score=0.0 if c["sample"] < 12 else 1.0) for c in a]  # 3% worse, p = 2^-12
    assert compare(a, b, min_drop=0.0).regressions
    strict = compare(a, b, min_drop=0.05)
    assert strict.cells[0].significant and not strict.regressions


def test_alignment_uses_seed_and_probe_hash():
    a = _run(np.random.default_rng(7), RATES)
    b = [dict(c, seed=8) if c["length"] == 1024 else dict(c) for c in a]
    pairs, only_a, only_b = pair_cells(a, b)
    assert 1024 not in {length for _, length in pairs}
    assert only_a == only_b == len(FAMILIES) * len(DEPTHS) * 8
    with pytest.raises(UserError, match="share no cells"):
        compare(a, [dict(c, probe_hash="other") for c in a])
    with pytest.raises(UserError, match="log-probabilities"):
        compare(a, a, metric="logprob")


def test_bad_parameters_name_the_option():
    a = _run(np.random.default_rng(8), RATES)
    for kwargs, word in (({"alpha": 1.5}, "--alpha"), ({"min_drop": -1}, "--min-drop"),
                         ({"metric": "bleu"}, "metric")):
        with pytest.raises(UserError, match=word):
            compare(a, a, **kwargs)
    assert math.isclose(compare(a, a).alpha, 0.05)
