"""Opening a results database: for writing (created and migrated), or read-only.

Read-only opens never write the database. In WAL mode SQLite reads through a `-shm` file beside
the database, creating it if absent; on a read-only directory or mount, or a full disk, it
cannot, so a reader falls back to `immutable=1`, which is exact only while no `-wal` file holds writes that are not
yet in the database file (a writer that closed cleanly leaves none); otherwise it says so.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ctxprobe.errors import UserError
from ctxprobe.store.faults import StoreError, fault
from ctxprobe.store.migrations import LATEST, READABLE_FROM, current_version, migrate

TABLES = ("schema_version", "runs", "cells")

# What SQLite says when it cannot make the -shm file: a read-only directory, a full disk.
NO_SHM = ("SQLITE_CANTOPEN", "SQLITE_IOERR_SHMOPEN", "SQLITE_IOERR_SHMSIZE", "SQLITE_IOERR_SHMMAP")


def open_writable(path: Path, timeout: float) -> sqlite3.Connection:
    parent = path.resolve().parent
    if not parent.is_dir():
        raise UserError(f"cannot create database {path}: directory {parent} does not exist; "
                        "create it or pass another --db")
    if path.exists() and not os.access(path, os.W_OK) or not os.access(parent, os.W_OK):
        raise UserError(f"database path {path} is read-only; pass a writable --db path")
    conn = None
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=timeout)
        _refuse_future(path, conn)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        migrate(conn)
        _check_tables(path, conn)
    except sqlite3.Error as e:
        if conn is not None:
            conn.close()
        name = getattr(e, "sqlite_errorname", "")
        if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
            raise UserError(f"database path {path} is read-only ({e}); "
                            "pass a writable --db path") from None
        if name == "SQLITE_NOTADB":
            raise UserError(f"{path} is not a ctxprobe results database ({e}); "
                            "pass another --db") from None
        raise fault(path, timeout, e, "opening it") from None
    except BaseException:
        if conn is not None:
            conn.close()
        raise
    return conn


def open_readonly(path: Path, timeout: float) -> sqlite3.Connection:
    """mode=ro; where the -shm file of a WAL database cannot be made, immutable=1."""
    try:
        try:
            return _connect_readonly(path, timeout, "mode=ro")
        except sqlite3.OperationalError as e:
            if getattr(e, "sqlite_errorname", "") not in NO_SHM or not _wal_mode(path):
                raise
            _refuse_unread_wal(path)
            return _connect_readonly(path, timeout, "immutable=1")
    except sqlite3.OperationalError as e:
        if getattr(e, "sqlite_errorname", "").startswith(("SQLITE_CANTOPEN", "SQLITE_PERM",
                                                           "SQLITE_READONLY", "SQLITE_AUTH")):
            raise UserError(f"cannot read database {path} ({e}); check its permissions "
                            "and those of its directory") from None
        raise fault(path, timeout, e, "opening it") from None
    except sqlite3.Error as e:
        if getattr(e, "sqlite_errorname", "") == "SQLITE_NOTADB":
            raise UserError(f"{path} is not a ctxprobe results database ({e}); "
                            "pass another --db") from None
        raise fault(path, timeout, e, "opening it") from None


def _connect_readonly(path: Path, timeout: float, mode: str) -> sqlite3.Connection:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True, isolation_level=None,
                           timeout=timeout)
    try:
        _refuse_future(path, conn)
        version = current_version(conn)
        if version == 0:
            raise UserError(f"{path} holds no ctxprobe results; pass another --db")
        if version < READABLE_FROM:
            raise UserError(f"database {path} has an older schema; upgrade it by "
                            "writing to it once (`ctxprobe merge` it into itself)")
        _check_tables(path, conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _refuse_unread_wal(path: Path) -> None:
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise UserError(
            f"cannot read database {path}: {wal.name} holds writes not yet in the database file, "
            f"which SQLite reads only through a {path.name}-shm file that it cannot make there "
            "(a read-only directory or a full disk); copy the database with its -wal file to a "
            "writable directory and read it there")


def _wal_mode(path: Path) -> bool:
    """Whether the file's header says WAL (bytes 18 and 19, the write and read versions, are 2)."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return header.startswith(b"SQLite format 3\0") and header[18:20] == b"\x02\x02"


def _refuse_future(path: Path, conn: sqlite3.Connection) -> None:
    version = current_version(conn)
    if version > LATEST:
        raise UserError(f"database {path} was written by a newer ctxprobe (schema version "
                        f"{version}, this ctxprobe knows up to {LATEST}); upgrade ctxprobe")


def _check_tables(path: Path, conn: sqlite3.Connection) -> None:
    present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = [t for t in TABLES if t not in present]
    if missing:
        raise StoreError(f"database {path} has no {missing[0]} table although its schema version "
                         f"({current_version(conn)}) has one: the file was damaged or edited; "
                         "restore it from a copy")
