"""Every family of a run on one page: one depth x length heatmap per family, one colour bar."""

from __future__ import annotations

import math

from matplotlib.colors import Normalize
from matplotlib.cm import ScalarMappable

from .heatmap import heatmap
from .style import SCORE_CMAP, new_figure, plain


def grid(panels, *, title=None, columns=2):
    """panels: list of (family, lengths, depths, score_DL, n_DL), one heatmap each."""
    if not panels:
        raise ValueError("grid needs at least one family's heatmap; the run has no scored cells")
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    widest = max(len(p[1]) for p in panels)
    tallest = max(len(p[2]) for p in panels)
    fig = new_figure(columns * max(4.8, 0.8 * widest + 1.6) + 0.8,
                     rows * max(3.0, 0.45 * tallest + 1.4) + (0.4 if title else 0))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, (family, lengths, depths, score_DL, n_DL) in zip(axes.flat, panels):
        heatmap(lengths, depths, score_DL, n_DL, title=family, ax=ax, colorbar=False)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), SCORE_CMAP), ax=axes, fraction=0.03, pad=0.02)
    bar.set_ticks([0, 0.25, 0.5, 0.75, 1.0], labels=["0%", "25%", "50%", "75%", "100%"])
    bar.set_label("score")
    bar.outline.set_visible(False)
    if title:
        fig.suptitle(plain(title), x=0.01, ha="left", fontsize=12, fontweight="bold")
    return fig
