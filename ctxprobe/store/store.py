"""The results store: one SQLite file, a row per run and a row per finished cell.

Writers commit each cell in its own transaction, so a killed sweep loses at most the cells in
flight and the same command resumes where it stopped. The file is in WAL mode so that
`ctxprobe report` can read while a sweep writes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from ctxprobe.errors import UserError
from ctxprobe.store.migrations import LATEST, READABLE_FROM, current_version, migrate

DEFAULT_PATH = "ctxprobe.db"

# The per-cell columns of the read API, in the order exports print them. `answers` (the gold
# answers, a list of strings) is None in rows stored before schema version 2.
CELL_KEYS = (
    "family", "length", "depth", "sample", "seed", "probe_hash", "score", "strict", "lenient",
    "exact", "logprob", "first_rank", "answers", "response", "prompt_tokens", "latency", "error",
)
CELL_KEY = ("family", "length", "depth", "sample")  # unique within a run


@dataclass(frozen=True)
class Run:
    id: int
    name: str
    created: str
    model_spec: str
    model_fingerprint: str
    backend: dict
    tokenizer_fingerprint: str
    version: str
    command: str
    settings: dict = field(default_factory=dict)  # what must match for a rerun to resume it


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Store:
    """A results database. `Store(path)` opens (and creates, and migrates) it for writing;
    `readonly=True` opens an existing one without writing; `must_exist=True` refuses a path
    with no database instead of creating one."""

    def __init__(self, path: str | os.PathLike = DEFAULT_PATH, *, readonly: bool = False,
                 must_exist: bool = False):
        self.path = Path(path)
        if (readonly or must_exist) and not self.path.is_file():
            raise UserError(f"no results database at {self.path}: run `ctxprobe run` first or pass --db")
        self.conn = self._open_readonly() if readonly else self._open_writable()
        self.conn.row_factory = sqlite3.Row

    # -- opening -------------------------------------------------------------------------

    def _open_writable(self) -> sqlite3.Connection:
        parent = self.path.resolve().parent
        if not parent.is_dir():
            raise UserError(f"cannot create database {self.path}: directory {parent} does not exist; "
                            "create it or pass another --db")
        if self.path.exists() and not os.access(self.path, os.W_OK) or not os.access(parent, os.W_OK):
            raise UserError(f"database path {self.path} is read-only; pass a writable --db path")
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            self._refuse_future(conn)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            migrate(conn)
        except sqlite3.OperationalError as e:
            if "readonly" in str(e) or "unable to open" in str(e) or "read-only" in str(e):
                raise UserError(f"database path {self.path} is read-only ({e}); "
                                "pass a writable --db path") from None
            raise UserError(f"cannot open database {self.path}: {e}") from None
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path} is not a ctxprobe results database ({e}); "
                            "pass another --db") from None
        return conn

    def _open_readonly(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                   isolation_level=None, timeout=30.0)
            self._refuse_future(conn)
            version = current_version(conn)
            if version == 0:
                conn.close()
                raise UserError(f"{self.path} holds no ctxprobe results; pass another --db")
            if version < READABLE_FROM:
                conn.close()
                raise UserError(f"database {self.path} has an older schema; upgrade it by "
                                "writing to it once (`ctxprobe merge` it into itself)")
        except sqlite3.OperationalError as e:
            raise UserError(f"cannot read database {self.path} ({e}); check its permissions "
                            "and those of its directory") from None
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path} is not a ctxprobe results database ({e}); "
                            "pass another --db") from None
        return conn

    def _refuse_future(self, conn: sqlite3.Connection) -> None:
        version = current_version(conn)
        if version > LATEST:
            conn.close()
            raise UserError(f"database {self.path} was written by a newer ctxprobe (schema version "
                            f"{version}, this ctxprobe knows up to {LATEST}); upgrade ctxprobe")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- runs ----------------------------------------------------------------------------

    @staticmethod
    def _run(row: sqlite3.Row) -> Run:
        d = dict(row)
        d["backend"] = json.loads(d["backend"])
        d["settings"] = json.loads(d["settings"])
        return Run(**d)

    def runs(self) -> list[Run]:
        return [self._run(r) for r in self.conn.execute("SELECT * FROM runs ORDER BY id")]

    def find_run(self, name: str) -> Run | None:
        row = self.conn.execute("SELECT * FROM runs WHERE name = ?", (name,)).fetchone()
        return self._run(row) if row else None

    def get_run(self, ref: str | int) -> Run:
        """A run by name, or by id (an int or a string of digits)."""
        run = self.find_run(str(ref))
        if run is None and str(ref).isdigit():
            row = self.conn.execute("SELECT * FROM runs WHERE id = ?", (int(ref),)).fetchone()
            run = self._run(row) if row else None
        if run is None:
            names = [r.name for r in self.runs()]
            known = ", ".join(names[-5:]) if names else "none yet"
            raise UserError(f"no run named {ref!r} in {self.path} (known runs: {known}); "
                            "see `ctxprobe runs`")
        return run

    def create_run(self, *, name: str, model_spec: str, model_fingerprint: str, backend: dict,
                   tokenizer_fingerprint: str, version: str, command: str,
                   settings: dict | None = None, created: str | None = None) -> Run:
        with self._transaction():
            cur = self.conn.execute(
                "INSERT INTO runs (name, created, model_spec, model_fingerprint, backend, "
                "tokenizer_fingerprint, version, command, settings) VALUES (?,?,?,?,?,?,?,?,?)",
                (name, created or _utc_now(), model_spec, model_fingerprint,
                 json.dumps(backend, sort_keys=True), tokenizer_fingerprint, version, command,
                 json.dumps(settings or {}, sort_keys=True)),
            )
        return self.get_run(cur.lastrowid)

    # -- cells ---------------------------------------------------------------------------

    def _cell_columns(self) -> str:
        """CELL_KEYS as a SELECT list; columns an older (read-only) schema lacks read as NULL."""
        present = {row[1] for row in self.conn.execute("PRAGMA table_info(cells)")}
        return ", ".join(k if k in present else f"NULL AS {k}" for k in CELL_KEYS)

    def cells(self, run_id: int) -> list[dict]:
        rows = self.conn.execute(
            f"SELECT {self._cell_columns()} FROM cells WHERE run_id = ? "
            "ORDER BY family, length, depth, sample", (run_id,))
        out = []
        for row in rows:
            cell = dict(row)
            cell["exact"] = None if cell["exact"] is None else bool(cell["exact"])
            cell["answers"] = None if cell["answers"] is None else json.loads(cell["answers"])
            out.append(cell)
        return out

    def done_keys(self, run_id: int) -> set[tuple]:
        """(family, length, depth, sample) of the cells that finished without an error."""
        rows = self.conn.execute(
            "SELECT family, length, depth, sample FROM cells WHERE run_id = ? AND error IS NULL",
            (run_id,))
        return {tuple(r) for r in rows}

    def put_cell(self, run_id: int, cell: dict) -> None:
        """Store one finished cell in its own transaction (replacing an earlier errored try)."""
        missing = [k for k in CELL_KEY + ("seed",) if cell.get(k) is None]
        assert not missing, f"cell lacks {missing}"
        values = {k: cell.get(k) for k in CELL_KEYS}
        if values["exact"] is not None:
            values["exact"] = int(bool(values["exact"]))
        if values["answers"] is not None:
            assert isinstance(values["answers"], (list, tuple)) and all(
                isinstance(a, str) for a in values["answers"]), values["answers"]
            values["answers"] = json.dumps(list(values["answers"]), ensure_ascii=False)
        columns = ("run_id",) + CELL_KEYS + ("finished",)
        with self._transaction():
            self.conn.execute(
                f"INSERT OR REPLACE INTO cells ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})",
                (run_id, *values.values(), _utc_now()),
            )

    def cell_counts(self, run_id: int) -> tuple[int, int]:
        """(cells stored, of which errored)."""
        row = self.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(error IS NOT NULL), 0) FROM cells WHERE run_id = ?",
            (run_id,)).fetchone()
        return row[0], row[1]

    # -- merging -------------------------------------------------------------------------

    def merge_from(self, other: "Store") -> tuple[int, int]:
        """Copy another store's runs and cells into this one without duplicates.

        Runs with the same name, model and settings (the shards of one sweep) become one run; a
        same-named run of another model or with other settings is copied under a new name. A
        cell already here is kept, unless it errored and the incoming one did not. Returns (runs
        added, cells added).
        """
        runs_added = cells_added = 0
        for run in other.runs():
            target = self.find_run(run.name)
            if target is not None and not _same_sweep(target, run):
                target = self._free_name_for(run, other.path.stem)
            if target is None or isinstance(target, str):
                fields = {k: v for k, v in run.__dict__.items() if k != "id"}
                if isinstance(target, str):
                    fields["name"] = target
                target = self.create_run(**fields)
                runs_added += 1
            before = self.cell_counts(target.id)[0]
            columns = ("run_id",) + CELL_KEYS + ("finished",)
            # Stored text as is (answers stay JSON); columns `other` lacks read as NULL.
            rows = other.conn.execute(
                f"SELECT {other._cell_columns()}, finished FROM cells WHERE run_id = ?", (run.id,))
            with self._transaction():
                for row in rows:
                    self.conn.execute(
                        f"INSERT INTO cells ({', '.join(columns)}) "
                        f"VALUES ({', '.join('?' * len(columns))}) "
                        "ON CONFLICT (run_id, family, length, depth, sample) DO UPDATE SET "
                        + ", ".join(f"{c} = excluded.{c}" for c in columns[5:])
                        + " WHERE cells.error IS NOT NULL AND excluded.error IS NULL",
                        (target.id, *tuple(row)),
                    )
            cells_added += self.cell_counts(target.id)[0] - before
        return runs_added, cells_added

    def _free_name_for(self, run: Run, source: str) -> "Run | str":
        """The run to merge into under `name@source[-k]`, or a free name to create it under."""
        for k in range(1, 1000):
            name = f"{run.name}@{source}" + (f"-{k}" if k > 1 else "")
            existing = self.find_run(name)
            if existing is None:
                return name
            if _same_sweep(existing, run):
                return existing
        raise UserError(f"too many runs named {run.name!r}; rename some before merging")

    # -- plumbing ------------------------------------------------------------------------

    def _transaction(self):
        return _Transaction(self.conn)


def _same_sweep(a: Run, b: Run) -> bool:
    """Whether two runs' cells may be pooled: what `open_run` checks before resuming a run."""
    return (a.settings == b.settings and a.model_spec == b.model_spec
            and a.model_fingerprint == b.model_fingerprint)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (the connection is autocommit)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
