"""What every ctxprobe figure shares: colour scales, cell annotation, saving (length labels:
labels.py).

Figures are built with `matplotlib.figure.Figure` directly (never pyplot), so nothing here
touches the global backend or keeps figures alive; PNG is rendered by Agg, SVG by the SVG
backend, both chosen from the file suffix.
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib import colormaps
from matplotlib.colors import LinearSegmentedColormap, SymLogNorm, to_rgb
from matplotlib.figure import Figure

# Scores: viridis, dark (context failed) -> yellow (answered). Perceptually uniform and readable
# with red-green colour blindness (the old red -> amber -> green scale put its brightest colour
# at 50% and its two ends at nearly the same grey for deuteranopes). Grey marks cells with no data.
SCORE_CMAP = colormaps["viridis"].with_extremes(bad="#e0e0e0")
# B minus A: orange = worse, white = unchanged, blue = better (a diverging pair that stays
# distinct without red-green vision).
DELTA_CMAP = LinearSegmentedColormap.from_list(
    "ctxprobe_delta", [(0.0, "#b35806"), (0.5, "#f7f7f7"), (1.0, "#2166ac")])
DELTA_CMAP = DELTA_CMAP.with_extremes(bad="#e0e0e0")
# Answer log-probabilities: one fixed scale for every report, so a colour means the same
# number everywhere: linear from 0 to -1 nat, logarithmic below, down to LOGPROB_FLOOR (lower
# values take the floor's colour; the colour bar says so with its pointed end).
LOGPROB_FLOOR = -30.0
LOGPROB_NORM = SymLogNorm(linthresh=1.0, linscale=1.0, vmin=LOGPROB_FLOOR, vmax=0.0, clip=True)

FORMATS = (".png", ".svg")


def plain(text) -> str:
    """A user's string (a run name, a file path, a family) as literal text: matplotlib reads
    text between two `$` as math, so "cost $x$" would typeset x and "$\\foo$" would fail to
    render. An escaped `\\$` shows as `$`, and nothing else in mathtext needs escaping."""
    return str(text).replace("$", r"\$")


def text_color(rgba) -> str:
    """Black or white, whichever reads better on a cell of this colour."""
    r, g, b = to_rgb(rgba)
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def stamp(fig: Figure, text: str | None) -> Figure:
    """Name the run (e.g. 'run my-run') in the image itself, bottom right and small, so that a
    PNG copied out of a report still says what it shows."""
    if text:
        fig.text(0.995, 0.005, plain(text), ha="right", va="bottom", fontsize=7, color="#616161",
                 gid="run-name")
    return fig


def save(fig: Figure, path, dpi: int = 110) -> Path:
    """Write fig as PNG or SVG according to path's suffix."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"cannot write a figure to {str(path)!r}: use a .png or .svg file name")
    fig.savefig(path, dpi=dpi, format=path.suffix.lower()[1:])
    return path


def to_bytes(fig: Figure, fmt: str = "png", dpi: int = 110) -> bytes:
    if "." + fmt not in FORMATS:
        raise ValueError(f"unknown figure format {fmt!r}: use 'png' or 'svg'")
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=fmt)
    return buf.getvalue()
