"""Stored cells and statistics -> plots/ figures (plots/ draws plain numbers; this feeds it)."""

from __future__ import annotations

import numpy as np

from ctxprobe import plots
from ctxprobe.analysis.compare import Comparison
from ctxprobe.analysis.effective_length import EffectiveLength
from ctxprobe.analysis.summary import curve, families, grid
from ctxprobe.plots.style import stamp


def _named(fig, run_name: str | None):
    """Every figure takes run_name: the run it shows is named in the image itself."""
    return stamp(fig, f"run {run_name}" if run_name else None)


def heatmap_figure(cells, family: str, title: str | None = None, *, run_name: str | None = None,
                   effective: int | None = None, designed: int | None = None):
    """effective: the threshold rule's effective length; designed: a limit the model was built to
    have (the demo's); each drawn as a line across the depths."""
    g = grid(cells, family)
    marks = []
    if effective is not None:
        marks.append(plots.Marker("effective length", effective))
    if designed is not None:
        marks.append(plots.Marker("designed limit", designed))
    return _named(plots.heatmap(g.lengths, g.depths, g.mean_DL, g.n_DL, title=title or family,
                               marks=marks), run_name)


def logprob_figure(cells, family: str, *, run_name: str | None = None):
    """None when the family's cells carry no log-probabilities (HTTP or generated answers)."""
    g = grid(cells, family, metric="logprob")
    if not g.lengths:
        return None
    return _named(plots.logprob_heatmap(g.lengths, g.depths, g.mean_DL, g.n_DL,
                                       title=f"{family}: answer log-probability"), run_name)


def falloff_figure(cells, family: str | None, eff: EffectiveLength | None, title: str | None = None,
                   *, run_name: str | None = None):
    c = curve(cells, family)
    markers, fit = [], None
    cutoff = None
    if eff is not None:
        cutoff = eff.threshold.cutoff
        if eff.threshold.length is not None:
            markers.append(plots.Marker("threshold rule", eff.threshold.length))
        if eff.fit is not None:
            percent = round(100 * cutoff)
            markers.append(plots.Marker(f"L{percent} (fit)", eff.l85, *eff.l85_ci))
            markers.append(plots.Marker("L50 (fit)", eff.l50, *eff.l50_ci))
            xs = np.geomspace(c.lengths[0], c.lengths[-1], 120)
            fit = (xs, eff.fit.predict(xs))
    return _named(plots.falloff(c.lengths, c.mean, c.lo, c.hi, threshold=cutoff, markers=markers,
                               fit=fit, title=title or family or "all families"), run_name)


def router_figure(bucket_starts, series, n_experts: int, *, run_name: str | None = None):
    """Expert-load entropy and top-1 margin by position bucket (analysis/router.py gives the numbers)."""
    return _named(plots.router_by_position(bucket_starts, series, n_experts=n_experts,
                                           title="MoE router by prompt position"), run_name)


def grid_figure(cells, title: str | None = None, *, run_name: str | None = None):
    panels = []
    for family in families(cells):
        g = grid(cells, family)
        if g.lengths:
            panels.append((family, g.lengths, g.depths, g.mean_DL, g.n_DL))
    return _named(plots.grid(panels, title=title), run_name)


def delta_figure(comparison: Comparison, title: str | None = None, *, run_name: str | None = None):
    """run_name: here both runs, e.g. 'A base-run, B new-run'."""
    rows = sorted({c.family for c in comparison.cells})
    lengths = sorted({c.length for c in comparison.cells})
    shape = (len(rows), len(lengths))
    delta, significant, regressed = np.full(shape, np.nan), np.zeros(shape, bool), np.zeros(shape, bool)
    n = np.zeros(shape, int)
    for c in comparison.cells:
        r, k = rows.index(c.family), lengths.index(c.length)
        delta[r, k], significant[r, k], regressed[r, k], n[r, k] = c.delta, c.significant, c.regressed, c.pairs
    fig = plots.delta_heatmap(rows, lengths, delta, significant, regressed, n,
                              percent=comparison.metric == "score", title=title,
                              min_drop=comparison.min_drop)
    return stamp(fig, f"runs: {run_name}" if run_name else None)
