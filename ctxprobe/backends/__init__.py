"""Backends answer probes: the native runner on a local checkpoint, or an OpenAI-compatible
HTTP server. `open_backend(spec, ...)` picks one from a --model spec."""

from ctxprobe.backends.base import Backend, CellResult
from ctxprobe.backends.spec import open_backend

__all__ = ["Backend", "CellResult", "open_backend"]
