"""Effective context length: the threshold rule, the logistic fit and its bootstrap intervals."""

import numpy as np
import pytest

from ctxprobe.analysis.effective_length import (
    LogisticFit, describe_length, describe_with_ci, effective_length, fit_logistic, threshold_length)
from ctxprobe.analysis.intervals import mean_interval, wilson
from ctxprobe.analysis.summary import curve, grid, values_by_length

LENGTHS = [1024 * 2**i for i in range(8)]  # 1K .. 128K


def test_threshold_rule_absolute_stops_at_first_failure():
    means = [1.0, 0.9, 0.86, 0.8, 0.95, 0.2, 0.0, 0.0]
    rule = threshold_length(LENGTHS, means)
    assert rule.length == 4096 and rule.cutoff == 0.85 and not rule.relative


def test_threshold_rule_relative_to_short_lengths():
    # The model never beats 0.6, but holds 85% of its short-context 0.6 up to 8K.
    means = [0.6, 0.6, 0.55, 0.52, 0.4, 0.2, 0.0, 0.0]
    assert threshold_length(LENGTHS, means).length is None
    rule = threshold_length(LENGTHS, means, relative=True)
    assert rule.cutoff == pytest.approx(0.51)
    assert rule.length == 8192


def test_threshold_rule_zero_short_score_has_no_reading():
    assert threshold_length(LENGTHS, np.zeros(8), relative=True).length is None


def test_threshold_rejects_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        threshold_length(LENGTHS, np.ones(8), threshold=85)


def test_logistic_fit_recovers_known_curve():
    true = LogisticFit(a=2.0, b=-1.5, centre=np.log2(16384))
    fit = fit_logistic(LENGTHS, true.predict(LENGTHS), np.full(8, 50.0))
    assert fit.b < 0
    # Exact (noise-free) means: the fit matches the generating curve at every length.
    np.testing.assert_allclose(fit.predict(LENGTHS), true.predict(LENGTHS), atol=2e-3)
    assert fit.length_at(0.5) == pytest.approx(true.length_at(0.5), rel=0.02)


def test_length_at_inverts_predict():
    fit = LogisticFit(a=0.7, b=-2.0, centre=12.0)
    for target in (0.2, 0.5, 0.85):
        assert fit.predict([fit.length_at(target)])[0] == pytest.approx(target, abs=1e-9)


def test_bootstrap_intervals_cover_the_truth_about_95_percent_of_the_time():
    true = LogisticFit(a=1.0, b=-1.2, centre=np.log2(16384))
    trials, covered50, covered85 = 100, 0, 0
    for trial in range(trials):
        rng = np.random.default_rng(trial)
        cells = {x: (rng.random(30) < true.predict([x])[0]).astype(float) for x in LENGTHS}
        eff = effective_length(cells, n_boot=200, seed=trial)
        assert eff.l50_ci[0] <= eff.l50 <= eff.l50_ci[1]
        assert eff.l85_ci[0] <= eff.l85 <= eff.l85_ci[1] and eff.l85 < eff.l50
        covered50 += eff.l50_ci[0] <= true.length_at(0.5) <= eff.l50_ci[1]
        covered85 += eff.l85_ci[0] <= true.length_at(0.85) <= eff.l85_ci[1]
    # Nominal 95%; 100 trials put 88% about 3 standard errors below it.
    assert covered50 / trials >= 0.88 and covered85 / trials >= 0.88


def test_step_function_gives_finite_steep_curve_between_the_lengths():
    cells = {x: np.full(5, 1.0 if x <= 8192 else 0.0) for x in LENGTHS}
    eff = effective_length(cells, n_boot=50)
    assert eff.threshold.length == 8192
    assert 8192 < eff.l50 < 16384 and 8192 < eff.l85 < 16384
    assert eff.fit.b < -3


def test_no_falloff_reads_beyond_the_tested_range():
    eff = effective_length({x: np.ones(4) for x in LENGTHS}, n_boot=50)
    assert eff.threshold.length == LENGTHS[-1]
    assert eff.l50 == np.inf and eff.l50_ci == (np.inf, np.inf)
    assert describe_length(eff.l85, eff.tested) == ">128K"
    dead = effective_length({x: np.zeros(4) for x in LENGTHS}, n_boot=50)
    assert dead.threshold.length is None
    assert describe_length(dead.l50, dead.tested) == "<1K"


def test_single_length_has_a_threshold_reading_but_no_fit():
    eff = effective_length({4096: np.array([1.0, 1.0, 0.0])})
    assert eff.threshold.length is None and eff.fit is None and eff.l50 is None
    assert effective_length({4096: np.ones(3)}).threshold.length == 4096


def test_empty_input_is_a_clear_error():
    with pytest.raises(ValueError, match="no scored cells"):
        effective_length({})


def test_wilson_matches_known_values():
    # Reference values from the closed form (Wilson 1927) at z = 1.96.
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0
    assert mean_interval([1, 0, 1, 1, 1, 1, 1, 1, 0, 1]) == wilson(8, 10)


def _cells():
    out = []
    for family, drop in (("niah", 0.0), ("multi", 0.5)):
        for length in (1024, 2048):
            for depth in (0.0, 50.0, 100.0):
                for sample in range(3):
                    score = float(not (length == 2048 and sample < 3 * drop))
                    out.append(dict(family=family, length=length, depth=depth, sample=sample,
                                    score=score, error=None))
    out.append(dict(family="niah", length=1024, depth=0.0, sample=9, score=None, error="timeout"))
    return out


def test_summary_grid_and_curve_from_cells():
    cells = _cells()
    g = grid(cells, "multi")
    assert g.lengths == [1024, 2048] and g.depths == [0.0, 50.0, 100.0]
    assert g.n_DL.tolist() == [[3, 3]] * 3  # the errored cell is not counted
    np.testing.assert_allclose(g.mean_DL[:, 1], 1 / 3)
    c = curve(cells, "niah")
    assert c.binary and c.n.tolist() == [9, 9] and c.mean.tolist() == [1.0, 1.0]
    assert list(values_by_length(cells)) == [1024, 2048]


def test_a_perfect_step_puts_the_interval_between_the_tested_lengths_around_it():
    # All pass up to 8K, all fail from 16K: resampling changes nothing, so the bootstrap alone
    # gave a zero-width interval ("5.55K [5.55K, 5.55K]" in the demo's report), claiming a
    # precision the grid cannot have. The crossing is only known to lie between 8K and 16K.
    cells = {x: np.full(6, 1.0 if x <= 8192 else 0.0) for x in LENGTHS}
    eff = effective_length(cells, n_boot=50)
    assert eff.l50_ci == (8192.0, 16384.0) and eff.l85_ci == (8192.0, 16384.0)
    assert describe_with_ci(eff, eff.l50, eff.l50_ci).endswith("[8K, 16K]")
    # A noisy cell elsewhere does not locate the crossing between 8K and 16K either.
    cells[4096] = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    noisy = effective_length(cells, n_boot=50)
    assert 8192 < noisy.l50 < 16384 and noisy.l50_ci == (8192.0, 16384.0)
    # Partial scores on both sides of the crossing: the bootstrap interval stands as computed.
    graded = {x: np.array([1.0] * (8 - i) + [0.0] * i) for i, x in enumerate(LENGTHS)}
    eff = effective_length(graded, n_boot=50)
    lo, hi = eff.l50_ci
    assert lo <= eff.l50 <= hi and not (lo in LENGTHS and hi in LENGTHS)
    # Never falling inside the tested range: still read as beyond it.
    flat = effective_length({x: np.ones(4) for x in LENGTHS}, n_boot=50)
    assert flat.l50_ci == (np.inf, np.inf)
