"""The SQLite results store (see store.py) and its numbered migrations (migrations.py)."""

from ctxprobe.store.store import CELL_KEYS, DEFAULT_PATH, Run, Store

__all__ = ["CELL_KEYS", "DEFAULT_PATH", "Run", "Store"]
