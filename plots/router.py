"""A mixture-of-experts router against prompt position: expert-load entropy and top-1 margin.

Two panels over the same x axis, the position buckets (bucket 0 is position 0, then each bucket
doubles: 1, 2-3, 4-7, ...), ticked at each bucket's first position. A series is one group of cells
(e.g. those answered correctly) in plain numbers, NaN where the group has no tokens:

    (label, entropy_B in bits, margin_B in [0, 1])

Colours are the ends of the delta scale (plots/style.py: blue better, orange worse), with solid
and dashed lines so that the groups also part in greyscale.
"""

from __future__ import annotations

import math

import numpy as np

from .labels import length_label
from .style import new_figure, plain

SERIES_STYLES = (("#2166ac", "-", "o"), ("#b35806", "--", "s"), ("#616161", ":", "^"))


def router_by_position(bucket_starts, series, *, n_experts: int, title=None):
    """bucket_starts: the first position of each bucket (B values); series: [(label, entropy_B, margin_B)]."""
    starts = [int(s) for s in bucket_starts]
    if not series or not starts:
        raise ValueError("router_by_position needs at least one series over at least one bucket")
    fig = new_figure(10.0, 3.6)
    ax_h, ax_m = fig.subplots(1, 2)
    xs = np.arange(len(starts))
    for (label, entropy_B, margin_B), (color, dash, mark) in zip(series, SERIES_STYLES * 4):
        entropy_B, margin_B = np.asarray(entropy_B, float), np.asarray(margin_B, float)
        if entropy_B.shape != (len(starts),) or margin_B.shape != (len(starts),):
            raise ValueError("each series gives one entropy and one margin per bucket")
        ax_h.plot(xs, entropy_B, dash, marker=mark, color=color, linewidth=2, markersize=5, label=plain(label))
        ax_m.plot(xs, margin_B, dash, marker=mark, color=color, linewidth=2, markersize=5, label=plain(label))
    even = math.log2(n_experts) if n_experts > 1 else 0.0
    ax_h.axhline(even, color="#9e9e9e", linewidth=1, linestyle=":", label=f"even over {n_experts} experts")
    ax_h.set_ylim(-0.05 * max(even, 1), max(even, 1) * 1.08)
    ax_h.set_ylabel("expert-load entropy (bits)")
    ax_m.set_ylim(-0.03, 1.03)
    ax_m.set_ylabel("top-1 margin (router score)")
    for ax in (ax_h, ax_m):
        ax.set_xticks(xs, [length_label(s) if s else "0" for s in starts])
        ax.set_xlabel("prompt position (bucket start; buckets double)")
        ax.grid(True, color="#eeeeee")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if len(starts) > 12:
            for tick in ax.get_xticklabels():
                tick.set_rotation(45)
    ax_h.legend(fontsize=8, frameon=False)
    if title:
        fig.suptitle(plain(title))
    return fig
