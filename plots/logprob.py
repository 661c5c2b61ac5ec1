"""Log-probability heatmap (native runs): mean log-probability of the gold answer per cell.

It falls before accuracy does, so it shows where context starts to weaken. The colour scale
runs from the run's worst cell mean (red) to 0 nats (green); shapes as in heatmap.py.
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import Normalize

from plots.heatmap import matrix_heatmap
from plots.style import SCORE_CMAP


def logprob_heatmap(lengths, depths, logprob_DL, n_DL, *, title=None, ax=None, colorbar=True):
    logprob_DL = np.asarray(logprob_DL, dtype=float)
    finite = logprob_DL[np.isfinite(logprob_DL)]
    low = min(float(finite.min()) if finite.size else -1.0, -1e-3)
    return matrix_heatmap(lengths, depths, logprob_DL, n_DL, title=title, ax=ax,
                          colorbar=colorbar, cmap=SCORE_CMAP, norm=Normalize(low, 0.0),
                          value_text=_nats, bar_label="answer log-probability (nats)")


def _nats(value: float) -> str:
    return f"{value:.2f}" if value > -10 else f"{value:.0f}"
