"""What the store says when SQLite fails: one line naming the file and what was being done.

A database that cannot be used right now (locked past the busy timeout, a full disk, a damaged
page, a missing table, a row that does not decode) raises StoreError. Every write is one
transaction that SQLite rolls back on failure, so nothing stored before is lost and the same
command resumes once the fault is gone.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ctxprobe.errors import UserError

# How long a connection waits for another process's lock before giving up (seconds).
BUSY_TIMEOUT_ENV = "CTXPROBE_DB_TIMEOUT"
DEFAULT_BUSY_TIMEOUT = 30.0


class StoreError(ValueError):
    """The database cannot be read or written right now (locked, disk full, damaged, a row that
    does not decode). Not the user's mistake, but shown the same way: one line, exit 2."""


def busy_timeout() -> float:
    """Seconds to wait for another process's lock: $CTXPROBE_DB_TIMEOUT, else 30."""
    raw = os.environ.get(BUSY_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_BUSY_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 1e6:
        raise UserError(f"{BUSY_TIMEOUT_ENV}={raw!r} is not a number of seconds (0 to 999999); "
                        "unset it or set e.g. 30")
    return seconds


def fault(path: Path, timeout: float, e: sqlite3.Error, doing: str) -> StoreError:
    """One line for database `path` that failed while `doing` (e.g. "storing cell ... of run 'x'")."""
    name = getattr(e, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StoreError(f"database {path} is locked by another process (waited {timeout:g} s "
                          f"while {doing}); nothing stored is lost: rerun when it is free, or set "
                          f"{BUSY_TIMEOUT_ENV} to wait longer")
    if name == "SQLITE_FULL" or name.startswith("SQLITE_IOERR") and _disk_full(path):
        return StoreError(f"database {path}: the disk is full (while {doing}); nothing stored "
                          "is lost: free some space and rerun the same command to resume")
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return StoreError(f"database {path} is damaged ({e}; while {doing}): restore it from a "
                          f"copy, or try `sqlite3 {path} .recover`")
    if name.startswith("SQLITE_READONLY"):
        return StoreError(f"database {path} became read-only ({e}; while {doing}); nothing "
                          "stored is lost: pass a writable --db path")
    return StoreError(f"database {path} failed while {doing}: {e}")


def _disk_full(path: Path) -> bool:
    """Whether the file system holding `path` has no block left (SQLite says only "disk I/O
    error" when it cannot grow the -shm file)."""
    try:
        st = os.statvfs(path.resolve().parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


class Guard:
    """Turns a sqlite3 error inside it into StoreError (a name clash on INSERT,
    sqlite3.IntegrityError, passes through: callers handle it)."""

    def __init__(self, path: Path, timeout: float, doing: str):
        self.path, self.timeout, self.doing = path, timeout, doing

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, sqlite3.Error) \
                and not issubclass(exc_type, sqlite3.IntegrityError):
            raise fault(self.path, self.timeout, exc, self.doing) from None
        return False


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (the connection is autocommit).
    SQLite may have rolled back already (a full disk does): then there is nothing to undo, and
    the original error is the one to report."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the error being raised says more than this one
