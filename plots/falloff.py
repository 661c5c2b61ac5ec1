"""The fall-off curve: score against context length, with its 95% band and effective lengths.

The caller computes the band (Wilson for binary scores) and the effective lengths; this file
only draws them. The length axis is logarithmic (base 2) with a tick at every tested length.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from matplotlib.ticker import FixedLocator, NullLocator

from .labels import approx_length_label, length_label
from .style import new_figure, plain

MARKER_COLORS = ("#1565c0", "#6a1b9a", "#00838f", "#ad1457")


class Marker(NamedTuple):
    """A vertical line at `length` (tokens), with an optional interval [lo, hi] drawn as a band."""
    label: str
    length: float
    lo: float | None = None
    hi: float | None = None


def falloff(lengths, mean, lo, hi, *, threshold=None, markers=(), fit=None, title=None,
            ax=None, label="score"):
    """lengths, mean, lo, hi: one value per tested length; fit: optional (lengths, scores) curve."""
    lengths = np.asarray(lengths, dtype=float)
    mean, lo, hi = (np.asarray(a, dtype=float) for a in (mean, lo, hi))
    if not (lengths.shape == mean.shape == lo.shape == hi.shape) or lengths.ndim != 1:
        raise ValueError("falloff wants lengths, mean, lo and hi as 1-D sequences of one length")
    if ax is None:
        ax = new_figure(7.6, 3.6).add_subplot()
    fig = ax.figure

    ax.fill_between(lengths, lo, hi, color="#2e7d32", alpha=0.18, linewidth=0, label="95% interval")
    ax.plot(lengths, mean, "o-", color="#2e7d32", linewidth=2, markersize=5, label=plain(label))
    if fit is not None:
        ax.plot(fit[0], fit[1], "--", color="#455a64", linewidth=1.3, label="logistic fit")
    if threshold is not None:
        ax.axhline(threshold, color="#c62828", linewidth=1, linestyle=":",
                   label=f"threshold {100 * threshold:.0f}%")
    # Readings outside the tested lengths are drawn in a margin beyond each end (never on the
    # axes' edge, where a line is clipped away), so that every legend entry is a line one sees.
    low, high = lengths.min() / 1.45, lengths.max() * 1.45
    edge_low, edge_high = lengths.min() / 1.2, lengths.max() * 1.2
    for marker, color in zip(markers, MARKER_COLORS * 4):
        if marker.length is None or np.isnan(marker.length):
            continue
        # A reading outside the tested lengths is drawn dotted at the edge and labelled "> max".
        inside = lengths.min() <= marker.length <= lengths.max()
        if inside:
            text = "= " + _label(marker.length, lengths)
        elif marker.length > lengths.max():
            text = "> " + length_label(lengths.max())
        else:
            text = "< " + length_label(lengths.min())
        x = float(np.clip(marker.length, edge_low, edge_high))
        ax.axvline(x, color=color, linewidth=1.6 if inside else 2.0, linestyle="-" if inside else ":",
                   label=plain(f"{marker.label} {text}"))
        if marker.lo is not None and marker.hi is not None:
            span_lo, span_hi = np.clip([marker.lo, marker.hi], edge_low, edge_high)
            if span_hi > span_lo:
                ax.axvspan(span_lo, span_hi, color=color, alpha=0.14,
                           label=plain(f"{marker.label} 95% interval"))

    ax.set_xscale("log", base=2)
    ax.set_xlim(low, high)
    ax.xaxis.set_major_locator(FixedLocator(lengths))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(lengths, [length_label(x) for x in lengths])
    ax.set_ylim(-0.03, 1.03)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0], ["0%", "25%", "50%", "75%", "100%"])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(plain(label))
    ax.grid(True, color="#eeeeee")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if title:
        ax.set_title(plain(title), loc="left", fontsize=11, fontweight="bold")
    return fig


def _label(length: float, tested) -> str:
    # A tested length keeps its round name; a fitted one shows its precision.
    return length_label(length) if length in tested else approx_length_label(length)
