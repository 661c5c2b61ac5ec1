"""Several runs on one axis: fall-off curves (score against length, each run's 95% band) and
any per-length measure (latency, time to first token) with a line per run.

A series is (label, lengths, values...) in plain numbers; labels are run names, drawn as text.
`slots` gives each series its run's place among all runs, so that a run keeps its colour on
every figure of a page even where some runs have no values.
"""

from __future__ import annotations

import numpy as np
from matplotlib.ticker import FixedLocator, NullLocator

from .labels import length_label
from .style import new_figure, plain

# Distinct at a glance and in greyscale order; a 9th run reuses the first colour with dashes.
RUN_COLORS = ("#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037", "#ad1457")


def _style(i: int) -> tuple[str, str]:
    return RUN_COLORS[i % len(RUN_COLORS)], "-" if i < len(RUN_COLORS) else "--"


def _length_axis(ax, lengths) -> None:
    lengths = sorted(set(float(x) for x in lengths))
    ax.set_xscale("log", base=2)
    ax.set_xlim(lengths[0] / 1.3, lengths[-1] * 1.3)
    ax.xaxis.set_major_locator(FixedLocator(lengths))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(lengths, [length_label(x) for x in lengths])
    ax.set_xlabel("context length (tokens)")
    ax.grid(True, color="#eeeeee")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def falloff_runs(series, *, threshold=None, title=None, slots=None):
    """series: [(label, lengths, mean, lo, hi)], one per run: score in [0, 1] against length."""
    if not series:
        raise ValueError("falloff_runs needs at least one run's curve")
    ax = new_figure(8.4, 3.8).add_subplot()
    for i, (label, lengths, mean, lo, hi) in zip(slots or range(len(series)), series):
        color, dash = _style(i)
        x = np.asarray(lengths, dtype=float)
        ax.fill_between(x, lo, hi, color=color, alpha=0.10, linewidth=0)
        ax.plot(x, mean, "o" + dash, color=color, linewidth=2, markersize=4, label=plain(label))
    if threshold is not None:
        ax.axhline(threshold, color="#757575", linewidth=1, linestyle=":",
                   label=f"threshold {100 * threshold:.0f}%")
    _length_axis(ax, [x for s in series for x in s[1]])
    ax.set_ylim(-0.03, 1.03)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0], ["0%", "25%", "50%", "75%", "100%"])
    ax.set_ylabel("score (95% band)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if title:
        ax.set_title(plain(title), loc="left", fontsize=11, fontweight="bold")
    return ax.figure


def by_length_runs(series, *, ylabel: str, title=None, log_y: bool = False, slots=None):
    """series: [(label, lengths, values)], one per run: a measure (seconds, tokens/s) per length."""
    if not series:
        raise ValueError("by_length_runs needs at least one run's values")
    ax = new_figure(8.4, 3.4).add_subplot()
    for i, (label, lengths, values) in zip(slots or range(len(series)), series):
        color, dash = _style(i)
        ax.plot(np.asarray(lengths, dtype=float), np.asarray(values, dtype=float), "o" + dash,
                color=color, linewidth=2, markersize=4, label=plain(label))
    _length_axis(ax, [x for s in series for x in s[1]])
    if log_y:
        ax.set_yscale("log")
    ax.set_ylabel(plain(ylabel))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if title:
        ax.set_title(plain(title), loc="left", fontsize=11, fontweight="bold")
    return ax.figure
