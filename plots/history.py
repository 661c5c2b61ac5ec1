"""History across runs: effective length per run (top) and score per length per run (bottom).

Shapes: R = runs (in time order), L = lengths. Effective lengths may be NaN (no reading) and
come with optional [lo, hi] intervals. A reading outside a run's tested lengths is a bound, not
a value: "<4K" (failed at the shortest) is drawn as an open downward triangle at 4K with its
label, ">1M" (never fell) as an upward one at 1M; the line does not pass through either.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.ticker import FuncFormatter, NullLocator

from .labels import length_label
from .style import new_figure, plain


def history(run_labels, effective, lengths, score_RL, *, title=None, bounds=None):
    """effective: {series name: (values_R, lo_R or None, hi_R or None)} in tokens.
    bounds: {series name: per run None, or ("<" | ">", tested length)} for readings outside the
    tested lengths (their value in `effective` is NaN)."""
    bounds = bounds or {}
    score_RL = np.asarray(score_RL, dtype=float)
    runs = np.arange(len(run_labels))
    if score_RL.shape != (len(run_labels), len(lengths)):
        raise ValueError(f"history wants score of shape (runs={len(run_labels)}, lengths={len(lengths)})")
    fig = new_figure(max(6.5, 0.7 * len(run_labels) + 4), 6.4)
    top, bottom = fig.subplots(2, 1, sharex=True)

    for name, (values, lo, hi) in effective.items():
        values = np.asarray(values, dtype=float)
        line, = top.plot(runs, values, "o-", linewidth=2, label=plain(name))
        if lo is not None and hi is not None:
            top.fill_between(runs, np.asarray(lo, float), np.asarray(hi, float),
                             color=line.get_color(), alpha=0.15, linewidth=0)
        for r, bound in enumerate(bounds.get(name) or []):
            if bound is not None:
                _draw_bound(top, r, *bound, line.get_color())
    readings = np.concatenate([np.asarray(v[0], float) for v in effective.values()]
                              + [np.array([b[1] for b in bs if b is not None], float) for bs in bounds.values()]
                              or [np.array([])])
    if np.any(np.isfinite(readings) & (readings > 0)):
        top.set_yscale("log", base=2)
    else:
        top.text(0.5, 0.5, "no effective-length reading inside the tested lengths",
                 transform=top.transAxes, ha="center", va="center", color="#616161")
    top.yaxis.set_major_formatter(FuncFormatter(lambda y, _: length_label(y) if y >= 1 else ""))
    top.yaxis.set_minor_locator(NullLocator())
    top.set_ylabel("effective length (tokens)")
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)

    colors = colormaps["viridis"](np.linspace(0.0, 0.9, max(len(lengths), 1)))
    for k, length in enumerate(lengths):
        bottom.plot(runs, score_RL[:, k], "o-", color=colors[k], linewidth=1.6,
                    label=length_label(length))
    bottom.set_ylim(-0.03, 1.03)
    bottom.set_yticks([0, 0.25, 0.5, 0.75, 1.0], ["0%", "25%", "50%", "75%", "100%"])
    bottom.set_ylabel("score at each length")
    bottom.legend(title="length", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                  frameon=False)
    bottom.set_xticks(runs, [plain(r) for r in run_labels], rotation=30, ha="right")
    bottom.set_xlabel("run")
    for ax in (top, bottom):
        ax.grid(True, color="#eeeeee")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    if title:
        top.set_title(plain(title), loc="left", fontsize=11, fontweight="bold")
    return fig


def _draw_bound(ax, run: int, sign: str, length: float, color) -> None:
    """A reading beyond the tested lengths: a hollow triangle pointing the way it goes, labelled."""
    ax.plot([run], [length], marker="v" if sign == "<" else "^", markersize=9, linestyle="none",
            markerfacecolor="none", markeredgecolor=color, markeredgewidth=1.8)
    ax.annotate(sign + length_label(length), (run, length), xytext=(7, -4 if sign == "<" else 4),
                textcoords="offset points", fontsize=8, color=color,
                va="top" if sign == "<" else "bottom")
