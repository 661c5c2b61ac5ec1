"""The package version, in a module of its own: stored with every run, and importable without
the package's façade (ctxprobe/__init__.py), which re-exports the API from above."""

__version__ = "0.1.0"
