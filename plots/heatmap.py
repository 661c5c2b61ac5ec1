"""The depth x length heatmap of one probe family: where in the context, and how deep, it fails.

Shapes: D = depths (rows, 0% at the top), L = lengths (columns, ascending; the columns are
equally spaced, so doubling lengths give a log-step axis). NaN cells (no data) are grey.
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import Normalize

from .labels import approx_length_label, length_label
from .style import SCORE_CMAP, new_figure, plain, text_color


def heatmap(lengths, depths, score_DL, n_DL, *, title=None, ax=None, colorbar=True, marks=()):
    """Mean score in [0, 1] per (depth, length) cell, annotated with the score and n.

    marks: plots.Marker(label, length) lines across the depths, e.g. the effective length and a
    designed limit, each in the legend under the axes with its length."""
    score_DL = np.asarray(score_DL, dtype=float)
    fig = matrix_heatmap(lengths, depths, score_DL, n_DL, title=title, ax=ax,
                         colorbar=colorbar, cmap=SCORE_CMAP, norm=Normalize(0.0, 1.0),
                         value_text=lambda v: f"{100 * v:.0f}%", bar_label="score",
                         bar_percent=True)
    if marks:
        _draw_marks(ax or fig.axes[0], list(lengths), marks)
    return fig


MARK_STYLES = (dict(color="#d81b60", linestyle="-"), dict(color="#212121", linestyle="--"))


def length_column(length: float, lengths) -> float:
    """Where a length sits on the column axis: a tested length at its column's right edge (a
    threshold length holds up to there); another between the columns around it, on a log scale."""
    if length in lengths:
        return lengths.index(length) + 0.5
    if length < lengths[0]:
        return -0.5
    if length > lengths[-1]:
        return len(lengths) - 0.5
    k = max(i for i, x in enumerate(lengths) if x < length)
    return k + float(np.log(length / lengths[k]) / np.log(lengths[k + 1] / lengths[k]))


def _draw_marks(ax, lengths, marks) -> None:
    from matplotlib import patheffects

    handles = []
    for marker, style in zip(marks, MARK_STYLES * 4):
        if marker.length is None:
            continue
        text = length_label(marker.length) if marker.length in lengths else approx_length_label(marker.length)
        if marker.length > lengths[-1]:
            text = "> " + length_label(lengths[-1])
        elif marker.length < lengths[0]:
            text = "< " + length_label(lengths[0])
        handles.append(ax.axvline(length_column(marker.length, lengths), linewidth=2.2,
                                  label=plain(f"{marker.label} {text}"), **style,
                                  path_effects=[patheffects.withStroke(linewidth=4, foreground="white")]))
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, -0.16), fontsize=8,
                  frameon=False, ncols=len(handles))


def matrix_heatmap(lengths, depths, values_DL, n_DL, *, title, ax, colorbar, cmap, norm,
                   value_text, bar_label, bar_percent=False, bar_extend="neither"):
    """Shared drawing for score and log-probability heatmaps; returns the Figure."""
    values_DL = np.asarray(values_DL, dtype=float)
    n_DL = np.asarray(n_DL, dtype=int)
    n_depths, n_lengths = values_DL.shape
    if (len(depths), len(lengths)) != values_DL.shape or n_DL.shape != values_DL.shape:
        raise ValueError(f"heatmap wants values and n of shape (depths={len(depths)}, "
                         f"lengths={len(lengths)}); got {values_DL.shape} and {n_DL.shape}")
    if ax is None:
        fig = new_figure(max(5.5, 0.85 * n_lengths + 2.6), max(3.2, 0.5 * n_depths + 1.6))
        ax = fig.add_subplot()
    fig = ax.figure

    image = ax.imshow(np.ma.masked_invalid(values_DL), cmap=cmap, norm=norm, aspect="auto",
                      interpolation="nearest")
    ax.set_xticks(range(n_lengths), [length_label(x) for x in lengths])
    ax.set_yticks(range(n_depths), [f"{d:g}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    # Thin white grid lines between cells, none at the ticks.
    ax.set_xticks(np.arange(-0.5, n_lengths, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n_depths, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.tick_params(which="major", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(plain(title), loc="left", fontsize=11, fontweight="bold")

    _annotate(ax, values_DL, n_DL, cmap, norm, value_text)
    if colorbar:
        bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, extend=bar_extend)
        bar.set_label(bar_label)
        if bar_percent:
            bar.set_ticks([0, 0.25, 0.5, 0.75, 1.0], labels=["0%", "25%", "50%", "75%", "100%"])
        bar.outline.set_visible(False)
    return fig


def _annotate(ax, values_DL, n_DL, cmap, norm, value_text):
    # Font size follows the cell size so that 20-column grids stay legible.
    fig_w, fig_h = ax.figure.get_size_inches()
    cell_w = fig_w * 0.8 / values_DL.shape[1]
    cell_h = fig_h * 0.8 / values_DL.shape[0]
    size = float(np.clip(min(cell_w * 13, cell_h * 20), 5, 10))
    for r in range(values_DL.shape[0]):
        for c in range(values_DL.shape[1]):
            value, n = values_DL[r, c], n_DL[r, c]
            if np.isnan(value):
                ax.text(c, r, "no data", ha="center", va="center", fontsize=size * 0.75,
                        color="#616161")
                continue
            color = text_color(cmap(norm(value)))
            ax.text(c, r - 0.13, value_text(value), ha="center", va="center", fontsize=size,
                    fontweight="bold", color=color)
            ax.text(c, r + 0.24, f"n={n}", ha="center", va="center", fontsize=size * 0.72,
                    color=color, alpha=0.85)
