"""Checks a command makes before it imports torch or reads a weight: a wrong path or a bad
length should cost a user a fraction of a second, not the torch import (10-25 s on a loaded
machine) or a model load. Everything here reads only the file system and strings."""

from __future__ import annotations

from pathlib import Path

from ctxprobe.errors import UserError

# The loader refuses these too (ctxprobe/models/loader.py); said here before torch is imported.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def check_checkpoint_dir(path: str | Path) -> None:
    """A checkpoint argument names a directory holding config.json (the same words as the loader's)."""
    p = Path(path)
    if p.suffix in _PICKLE_SUFFIXES:
        raise UserError(f"{p}: pickle checkpoints are refused (they can run code when loaded); use safetensors")
    if not p.exists():
        raise UserError(f"{p}: no such checkpoint directory")
    if not p.is_dir():
        raise UserError(f"{p}: expected a checkpoint directory holding config.json and *.safetensors")
    if not (p / "config.json").is_file():
        raise UserError(f"{p}: no config.json; expected an HF-format checkpoint directory")


def check_token_list(text: str, what: str) -> list[int]:
    """'4k,128k' -> token counts, each one read as ctxprobe reads a length (k = 1024)."""
    from ctxprobe.units import parse_tokens

    return [parse_tokens(part.strip(), what) for part in text.split(",")]
