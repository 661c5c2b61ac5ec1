"""What the user sees: heatmaps, fall-off curves, regression deltas, history, HTML reports.

Pure matplotlib over plain numbers (no ctxprobe imports): callers aggregate, these draw.
`save(fig, "x.png" | "x.svg")` writes a figure. Names are imported on first use, so that
`ctxprobe.plots.labels` (length labels for text output) never loads matplotlib.
"""

import sys
from importlib import import_module
from types import ModuleType

# name -> the module of this package that defines it
_NAMES = {"Marker": "falloff", "delta_heatmap": "delta", "falloff": "falloff", "grid": "grid",
          "heatmap": "heatmap", "history": "history", "length_label": "labels",
          "logprob_heatmap": "logprob", "router_by_position": "router", "save": "style",
          "to_bytes": "style"}

__all__ = sorted(_NAMES)


def __getattr__(name):
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_NAMES[name]}", __name__), name)
    globals()[name] = value   # the next look-up finds it here
    return value


class _Package(ModuleType):
    """Four drawing functions share their module's name (heatmap.py defines heatmap). Importing
    such a module sets the package attribute of that name to the module; here the function keeps
    the name (`plots.heatmap(...)`), and the module stays reachable by its import path."""

    def __setattr__(self, name, value):
        if name in _NAMES and isinstance(value, ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
