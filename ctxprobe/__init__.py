"""ctxprobe: where does a language model's context really stop working?"""

__version__ = "0.1.0"

from ctxprobe.errors import UserError  # noqa: E402

__all__ = ["UserError", "__version__"]
