"""What the user sees: heatmaps, fall-off curves, regression deltas, history, HTML reports.

Pure matplotlib over plain numbers (no ctxprobe imports): callers aggregate, these draw.
`save(fig, "x.png" | "x.svg")` writes a figure.
"""

from .delta import delta_heatmap
from .falloff import Marker, falloff
from .grid import grid
from .heatmap import heatmap
from .history import history
from .logprob import logprob_heatmap
from .router import router_by_position
from .style import length_label, save, to_bytes

__all__ = ["Marker", "delta_heatmap", "falloff", "grid", "heatmap", "history", "length_label",
           "logprob_heatmap", "router_by_position", "save", "to_bytes"]
