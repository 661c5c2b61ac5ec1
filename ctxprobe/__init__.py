"""ctxprobe: where does a language model's context really stop working?"""

__version__ = "0.1.0"

from ctxprobe.errors import UserError  # noqa: E402

__all__ = ["UserError", "__version__", "load_model"]


def __getattr__(name):
    # `ctxprobe.load_model` imported on first use, so `import ctxprobe` (and the CLI) stays light.
    if name == "load_model":
        from ctxprobe.runner.load import load_model

        return load_model
    raise AttributeError(f"module 'ctxprobe' has no attribute {name!r}")
