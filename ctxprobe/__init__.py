"""ctxprobe: where does a language model's context really stop working?"""

from pathlib import Path as _Path

# attention/, probes/ and plots/ sit beside this folder in a source checkout and are installed
# inside it (ctxprobe.attention, ...; see pyproject.toml). Run from a checkout that is not
# installed, or whose editable finder is shadowed by the working directory, let
# `ctxprobe.attention` find the folder beside us. Installed layouts never take this branch.
_root = _Path(__file__).resolve().parent.parent
if not (_root / "ctxprobe" / "attention").exists() and (_root / "pyproject.toml").exists() \
        and (_root / "attention" / "__init__.py").exists():
    __path__.append(str(_root))  # noqa: F821 (a package's __path__)

from ctxprobe.errors import UserError  # noqa: E402
from ctxprobe.version import __version__  # noqa: E402

__all__ = ["Grid", "Interrupted", "NativeOptions", "RunConfig", "RunResult", "ServerOptions", "UserError",
           "__version__", "load_model", "run"]

# The Python API (ctxprobe/api.py), imported on first use so that `import ctxprobe` (and the CLI,
# and an HTTP run) never loads torch.
_API = {"run", "RunConfig", "RunResult", "Grid", "NativeOptions", "ServerOptions", "Interrupted"}


def __getattr__(name):
    if name == "load_model":
        from ctxprobe.runner.load import load_model

        return load_model
    if name in _API:
        from ctxprobe import api

        return getattr(api, name)
    raise AttributeError(f"module 'ctxprobe' has no attribute {name!r}")
