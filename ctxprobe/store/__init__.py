"""The SQLite results store (see store.py), its numbered migrations (migrations.py), how it
opens a file (opening.py) and what it says when SQLite fails (faults.py)."""

from ctxprobe.store.faults import StoreError
from ctxprobe.store.store import CELL_KEYS, DEFAULT_PATH, Invocation, Run, Store

__all__ = ["CELL_KEYS", "DEFAULT_PATH", "Invocation", "Run", "Store", "StoreError"]
