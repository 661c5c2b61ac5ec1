"""Regression delta heatmap: B minus A per (family, length), significant cells marked.

Shapes: R = rows (families), L = lengths. Orange = B is worse, blue = B is better. A cell whose
paired test is significant after correction gets a '*'; a regression (significant and larger
than the minimum drop) also gets a heavy outline.
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter

from .labels import length_label
from .style import DELTA_CMAP, new_figure, plain, text_color


def delta_heatmap(rows, lengths, delta_RL, significant_RL, regressed_RL=None, n_RL=None, *,
                  percent=True, title=None, ax=None, min_drop=0.0):
    """percent=True: deltas of scores in [0, 1] shown as percentage points; else raw (nats).

    min_drop: the change the comparison tolerates (`compare --min-drop`). A change inside it is
    painted as unchanged (white), and the scale spans at least twice it, so that no change
    smaller than what counts as a regression reads as a deep colour."""
    delta_RL = np.asarray(delta_RL, dtype=float)
    significant_RL = np.asarray(significant_RL, dtype=bool)
    shape = (len(rows), len(lengths))
    regressed_RL = np.zeros(shape, bool) if regressed_RL is None else np.asarray(regressed_RL, bool)
    if not (delta_RL.shape == significant_RL.shape == regressed_RL.shape == shape):
        raise ValueError(f"delta_heatmap wants arrays of shape (rows={shape[0]}, lengths={shape[1]})")
    if ax is None:
        ax = new_figure(max(5.5, 0.85 * shape[1] + 2.8), max(2.4, 0.55 * shape[0] + 1.6)).add_subplot()
    fig = ax.figure

    finite = np.abs(delta_RL[np.isfinite(delta_RL)])
    span = 1.0 if percent else max(float(finite.max()) if finite.size else 1.0, 1e-3)
    if percent:  # a 20-point change already reads as a deep colour
        span = min(1.0, max(0.2, float(finite.max()) if finite.size else 0.2))
    span = max(span, 2 * min_drop)
    norm = Normalize(-span, span)
    shown_RL = np.where(np.abs(delta_RL) <= min_drop, 0.0, delta_RL)   # NaN stays NaN
    image = ax.imshow(np.ma.masked_invalid(shown_RL), cmap=DELTA_CMAP, norm=norm, aspect="auto",
                      interpolation="nearest")
    ax.set_xticks(range(shape[1]), [length_label(x) for x in lengths])
    ax.set_yticks(range(shape[0]), [plain(r) for r in rows])
    ax.set_xlabel("context length (tokens)")
    ax.set_xticks(np.arange(-0.5, shape[1], 1), minor=True)
    ax.set_yticks(np.arange(-0.5, shape[0], 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="both", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)

    for r in range(shape[0]):
        for c in range(shape[1]):
            value = delta_RL[r, c]
            if np.isnan(value):
                ax.text(c, r, "no pairs", ha="center", va="center", fontsize=7, color="#616161")
                continue
            color = text_color(DELTA_CMAP(norm(shown_RL[r, c])))
            text = f"{100 * value:+.0f}" if percent else f"{value:+.2f}"
            text = "0" if text.lstrip("+-").strip("0.") == "" else text
            text += "*" if significant_RL[r, c] else ""
            ax.text(c, r - (0.12 if n_RL is not None else 0), text, ha="center", va="center",
                    fontsize=9, fontweight="bold", color=color)
            if n_RL is not None:
                ax.text(c, r + 0.26, f"n={int(np.asarray(n_RL)[r, c])}", ha="center",
                        va="center", fontsize=6.5, color=color)
            if regressed_RL[r, c]:
                ax.add_patch(Rectangle((c - 0.47, r - 0.47), 0.94, 0.94, fill=False,
                                       edgecolor="black", linewidth=2.2))
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("B - A (percentage points)" if percent else "B - A (nats)")
    if percent:
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:+.0f}" if v else "0"))
    bar.outline.set_visible(False)
    ax.set_title(plain(title or "B - A"), loc="left", fontsize=11, fontweight="bold")
    # The key goes under the axis label, not beside the title: a title naming two runs fills
    # that line.
    key = "* significantly worse (Holm)   boxed: regression"
    if min_drop > 0:
        tolerance = f"{100 * min_drop:.0f} points" if percent else f"{min_drop:g} nats"
        key += f"   white: within the tolerated {tolerance}"
    ax.annotate(key, xy=(0.5, 0.0),
                xycoords=ax.xaxis.label, xytext=(0, -3), textcoords="offset points",
                ha="center", va="top", fontsize=8, color="#616161")
    return fig
