"""What the user sees: heatmaps, fall-off curves, regression deltas, history, HTML reports.

Pure matplotlib over plain numbers (no ctxprobe imports): callers aggregate, these draw.
`save(fig, "x.png" | "x.svg")` writes a figure.
"""

from plots.delta import delta_heatmap
from plots.falloff import Marker, falloff
from plots.grid import grid
from plots.heatmap import heatmap
from plots.history import history
from plots.logprob import logprob_heatmap
from plots.style import length_label, save, to_bytes

__all__ = ["Marker", "delta_heatmap", "falloff", "grid", "heatmap", "history", "length_label",
           "logprob_heatmap", "save", "to_bytes"]
