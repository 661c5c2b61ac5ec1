"""The built-in model: a constructed checkpoint whose context limit is known (docs/builtin.md)."""

from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent / "model"   # `--model builtin`, `--tokenizer builtin`
