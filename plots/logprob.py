"""Log-probability heatmap (native runs): mean log-probability of the gold answer per cell.

It falls before accuracy does, so it shows where context starts to weaken. The colour scale is
fixed (plots/style.py LOGPROB_NORM: 0 nats down to the floor), the same in every report, so that
two reports' colours compare; shapes as in heatmap.py.
"""

from __future__ import annotations

import numpy as np

from .heatmap import matrix_heatmap
from .style import LOGPROB_NORM, SCORE_CMAP


def logprob_heatmap(lengths, depths, logprob_DL, n_DL, *, title=None, ax=None, colorbar=True):
    logprob_DL = np.asarray(logprob_DL, dtype=float)
    return matrix_heatmap(lengths, depths, logprob_DL, n_DL, title=title, ax=ax,
                          colorbar=colorbar, cmap=SCORE_CMAP, norm=LOGPROB_NORM,
                          value_text=_nats, bar_label="answer log-probability (nats)",
                          bar_extend="min")


def _nats(value: float) -> str:
    return f"{value:.2f}" if value > -10 else f"{value:.0f}"

