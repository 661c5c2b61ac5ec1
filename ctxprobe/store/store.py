"""The results store: one SQLite file, a row per run and a row per finished cell.

Writers commit each cell in its own transaction, so a killed sweep loses at most the cells in
flight and the same command resumes where it stopped. A cell stored without an error is final:
no later try (a retry in flight at resume, an identical sweep running at the same time) replaces
it. The file is in WAL mode so that `ctxprobe report` can read while a sweep writes; readers
open it read-only and also read it on a read-only directory or mount.

A database that cannot be used right now raises StoreError (faults.py): one line naming the file
and, where known, the run and cell.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ctxprobe.errors import UserError
from ctxprobe.router_trace import RouterTrace
from ctxprobe.store.faults import Guard, StoreError, Transaction, busy_timeout
from ctxprobe.store.opening import open_readonly, open_writable

DEFAULT_PATH = "ctxprobe.db"

# The per-cell columns of the read API, in the order exports print them. `answers` (the gold
# answers, a list of strings) is None in rows stored before schema version 2. `response_kind`
# says what `response` is: "generated" (what the model wrote) or "teacher-forced" (the argmax at
# each gold-answer position with the gold answer fed in: a per-position guess, not a text the
# model would write); rows from before version 3 read it from `exact`. `generation`: for a
# teacher-forced cell that failed, the model's real greedy output (bounded), else None.
CELL_KEYS = (
    "family", "length", "depth", "sample", "seed", "probe_hash", "score", "strict", "lenient",
    "exact", "logprob", "first_rank", "answers", "response", "response_kind", "generation",
    "prompt_tokens", "latency", "error",
    # schema version 5 (issue 16), NULL in rows from before: the rank of the first gold token that
    # is not whitespace (first_rank ranks the first, often a space); the prompt as the server
    # counted it; how the answer ended; cut off before any answer (unscored); reasoning and output
    # tokens; streamed: seconds to the first token and tokens/s after it.
    "informative_rank", "server_prompt_tokens", "finish_reason", "truncated", "reasoning_tokens",
    "output_tokens", "ttft", "decode_rate",
)
RESPONSE_KINDS = ("generated", "teacher-forced")
CELL_KEY = ("family", "length", "depth", "sample")  # unique within a run

# When a stored cell (`cells`) may be replaced by a new try of it (`excluded`): only while it is
# errored. A cell stored without error is final, whatever comes later or from a parallel sweep.
REPLACEABLE = "cells.error IS NOT NULL"


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


@dataclass(frozen=True)
class Invocation:
    """One command that added to a run (`ctxprobe run`, `demo`, ...). Runs stored before schema
    version 4 have one, from the run row, with the counts unknown (None)."""
    id: int
    run_id: int
    started: str
    command: str
    version: str
    cells_pending: int | None    # cells it set out to run
    cells_done: int | None       # cells it stored, errored ones too
    cells_errored: int | None
    ended: str | None            # None: still running, killed, or from before version 4

    def added(self) -> str:
        """What it added, in words, for `runs` and the report."""
        if self.cells_pending is None:
            return "not counted (recorded before ctxprobe kept invocations)"
        if self.ended is None:
            return f"{self.cells_pending} pending; did not finish (still running, or stopped)"
        errored = f", {self.cells_errored} errored" if self.cells_errored else ""
        return f"{self.cells_done} of {self.cells_pending} added{errored}"


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Store:
    """A results database. `Store(path)` opens (and creates, and migrates) it for writing;
    `readonly=True` opens an existing one without writing; `must_exist=True` refuses a path
    with no database instead of creating one."""

    def __init__(self, path: str | os.PathLike = DEFAULT_PATH, *, readonly: bool = False,
                 must_exist: bool = False):
        self.path = Path(path)
        self.timeout = busy_timeout()
        self._run_names: dict[int, str] = {}  # to name a run in an error without reading again
        if (readonly or must_exist) and not self.path.is_file():
            raise UserError(f"no results database at {self.path}: run `ctxprobe run` first or pass --db")
        self.conn = (open_readonly if readonly else open_writable)(self.path, self.timeout)
        self.conn.row_factory = sqlite3.Row

    def _guard(self, doing: str) -> Guard:
        return Guard(self.path, self.timeout, doing)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- runs ----------------------------------------------------------------------------

    def _run(self, row: sqlite3.Row) -> Run:
        d = dict(row)
        self._run_names[d["id"]] = d["name"]
        for key in ("backend", "settings"):
            try:
                d[key] = json.loads(d[key])
            except (TypeError, json.JSONDecodeError) as e:
                raise StoreError(f"database {self.path}: run {d['name']!r} (id {d['id']}) has "
                                 f"unreadable {key} JSON ({e}); the row was damaged or edited: "
                                 "restore the file from a copy") from None
        return Run(**d)

    def runs(self) -> list[Run]:
        with self._guard("reading its runs"):
            rows = self.conn.execute("SELECT * FROM runs ORDER BY id").fetchall()
        return [self._run(r) for r in rows]

    def find_run(self, name: str) -> Run | None:
        with self._guard(f"looking up run {name!r}"):
            row = self.conn.execute("SELECT * FROM runs WHERE name = ?", (name,)).fetchone()
        return self._run(row) if row else None

    def get_run(self, ref: str | int) -> Run:
        """A run by name, or by id (an int or a string of digits)."""
        run = self.find_run(str(ref))
        if run is None and str(ref).isdigit():
            with self._guard(f"looking up run {ref}"):
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
        """A new run; sqlite3.IntegrityError when another process created one of that name just now."""
        with self._guard(f"creating run {name!r}"), self._transaction():
            cur = self.conn.execute(
                "INSERT INTO runs (name, created, model_spec, model_fingerprint, backend, "
                "tokenizer_fingerprint, version, command, settings) VALUES (?,?,?,?,?,?,?,?,?)",
                (name, created or _utc_now(), model_spec, model_fingerprint,
                 json.dumps(backend, sort_keys=True), tokenizer_fingerprint, version, command,
                 json.dumps(settings or {}, sort_keys=True)),
            )
        return self.get_run(cur.lastrowid)

    # -- invocations ---------------------------------------------------------------------

    def start_invocation(self, run_id: int, *, command: str, version: str, cells_pending: int) -> int:
        """Record a command that is about to add to a run; returns its id for `end_invocation`."""
        with self._guard(f"recording an invocation of {self._run_label(run_id)}"), self._transaction():
            cur = self.conn.execute(
                "INSERT INTO invocations (run_id, started, command, version, cells_pending) "
                "VALUES (?,?,?,?,?)", (run_id, _utc_now(), command, version, cells_pending))
        return cur.lastrowid

    def end_invocation(self, invocation_id: int, *, cells_done: int, cells_errored: int) -> None:
        with self._guard("recording the end of an invocation"), self._transaction():
            self.conn.execute("UPDATE invocations SET cells_done = ?, cells_errored = ?, ended = ? "
                              "WHERE id = ?", (cells_done, cells_errored, _utc_now(), invocation_id))

    def invocations(self, run_id: int) -> list[Invocation]:
        """The commands that added to a run, oldest first; none in a database from before schema
        version 4 opened read-only (it has no such table)."""
        with self._guard(f"reading the invocations of {self._run_label(run_id)}"):
            if not self._has_table("invocations"):
                return []
            rows = self.conn.execute("SELECT * FROM invocations WHERE run_id = ? ORDER BY id",
                                     (run_id,)).fetchall()
        return [Invocation(**dict(r)) for r in rows]

    def _copy_invocations(self, other: "Store", source_run: int, target_run: int) -> None:
        """Merging: the source run's invocations that the target lacks (same start and command)."""
        have = {(i.started, i.command) for i in self.invocations(target_run)}
        for inv in other.invocations(source_run):
            if (inv.started, inv.command) in have:
                continue
            self.conn.execute(
                "INSERT INTO invocations (run_id, started, command, version, cells_pending, "
                "cells_done, cells_errored, ended) VALUES (?,?,?,?,?,?,?,?)",
                (target_run, inv.started, inv.command, inv.version, inv.cells_pending,
                 inv.cells_done, inv.cells_errored, inv.ended))

    def _run_label(self, run_id: int) -> str:
        name = self._run_names.get(run_id)
        return f"run {name!r}" if name is not None else f"run id {run_id}"

    # -- cells ---------------------------------------------------------------------------

    def _cell_columns(self) -> str:
        """CELL_KEYS as a SELECT list; columns an older (read-only) schema lacks read as NULL."""
        present = {row[1] for row in self.conn.execute("PRAGMA table_info(cells)")}
        return ", ".join(k if k in present else f"NULL AS {k}" for k in CELL_KEYS)

    def cells(self, run_id: int) -> list[dict]:
        with self._guard(f"reading the cells of {self._run_label(run_id)}"):
            rows = self.conn.execute(
                f"SELECT {self._cell_columns()} FROM cells WHERE run_id = ? "
                "ORDER BY family, length, depth, sample", (run_id,)).fetchall()
        out = []
        for row in rows:
            cell = dict(row)
            cell["exact"] = None if cell["exact"] is None else bool(cell["exact"])
            cell["truncated"] = None if cell["truncated"] is None else bool(cell["truncated"])
            try:
                answers = None if cell["answers"] is None else json.loads(cell["answers"])
            except (TypeError, json.JSONDecodeError) as e:
                raise StoreError(f"database {self.path}: {_cell_label(cell)} of "
                                 f"{self._run_label(run_id)} has unreadable answers JSON ({e}); "
                                 "the row was damaged or edited: restore the file from a copy") from None
            cell["answers"] = answers
            if cell["response_kind"] is None:   # rows from before version 3
                cell["response_kind"] = "generated" if cell["exact"] is None else "teacher-forced"
            out.append(cell)
        return out

    def done_keys(self, run_id: int) -> set[tuple]:
        """(family, length, depth, sample) of the cells that finished without an error."""
        with self._guard(f"reading the finished cells of {self._run_label(run_id)}"):
            rows = self.conn.execute(
                "SELECT family, length, depth, sample FROM cells WHERE run_id = ? AND error IS NULL",
                (run_id,)).fetchall()
        return {tuple(r) for r in rows}

    def put_cell(self, run_id: int, cell: dict, *, router_trace: RouterTrace | None = None) -> bool:
        """Store one finished cell in its own transaction. An errored cell stored earlier is
        replaced; a cell stored without error is kept and this one dropped (returns False).
        router_trace: the cell's (`ctxprobe run --router-trace`), stored with it or not at all."""
        missing = [k for k in CELL_KEY + ("seed",) if cell.get(k) is None]
        assert not missing, f"cell lacks {missing}"
        values = {k: _storable(cell.get(k)) for k in CELL_KEYS}
        for flag in ("exact", "truncated"):
            if values[flag] is not None:
                values[flag] = int(bool(values[flag]))
        assert values["response_kind"] in RESPONSE_KINDS + (None,), values["response_kind"]
        if values["answers"] is not None:
            assert isinstance(values["answers"], (list, tuple)) and all(
                isinstance(a, str) for a in values["answers"]), values["answers"]
            values["answers"] = json.dumps(list(values["answers"]), ensure_ascii=False)
        columns = ("run_id",) + CELL_KEYS + ("finished",)
        with self._guard(f"storing {_cell_label(cell)} of {self._run_label(run_id)}"), \
                self._transaction():
            cur = self.conn.execute(
                f"INSERT INTO cells ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))}) "
                f"ON CONFLICT ({', '.join(('run_id',) + CELL_KEY)}) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in columns[len(CELL_KEY) + 1:])
                + f" WHERE {REPLACEABLE}",
                (run_id, *values.values(), _utc_now()),
            )
            stored = cur.rowcount > 0
            if stored and router_trace is not None:
                shape, data = router_trace.encode()
                self.conn.execute(
                    "INSERT OR REPLACE INTO router_traces (run_id, family, length, depth, sample, shape, data) "
                    "VALUES (?,?,?,?,?,?,?)", (run_id, *(cell[k] for k in CELL_KEY), shape, data))
        return stored

    def router_traces(self, run_id: int) -> dict[tuple, RouterTrace]:
        """(family, length, depth, sample) -> that cell's router trace, for the cells that have one;
        empty for a database from before schema version 6 opened read-only (it has no such table)."""
        with self._guard(f"reading the router traces of {self._run_label(run_id)}"):
            if not self._has_table("router_traces"):
                return {}
            rows = self.conn.execute("SELECT family, length, depth, sample, shape, data FROM router_traces "
                                     "WHERE run_id = ?", (run_id,)).fetchall()
        out = {}
        for family, length, depth, sample, shape, data in rows:
            key = (family, length, float(depth), sample)
            try:
                out[key] = RouterTrace.decode(shape, data)
            except (ValueError, KeyError, TypeError, zlib.error, json.JSONDecodeError) as e:
                raise StoreError(f"database {self.path}: the router trace of {_cell_label(dict(zip(CELL_KEY, key)))} "
                                 f"of {self._run_label(run_id)} is unreadable ({e}); the row was damaged or "
                                 "edited: restore the file from a copy") from None
        return out

    def _has_table(self, name: str) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                 (name,)).fetchone() is not None

    def cell_counts(self, run_id: int) -> tuple[int, int]:
        """(cells stored, of which errored)."""
        with self._guard(f"counting the cells of {self._run_label(run_id)}"):
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
            with other._guard(f"reading the cells of run {run.name!r}"):
                rows = other.conn.execute(
                    f"SELECT {other._cell_columns()}, finished FROM cells WHERE run_id = ?",
                    (run.id,)).fetchall()
            with self._guard(f"merging the cells of run {run.name!r} from {other.path}"), \
                    self._transaction():
                for row in rows:
                    self.conn.execute(
                        f"INSERT INTO cells ({', '.join(columns)}) "
                        f"VALUES ({', '.join('?' * len(columns))}) "
                        f"ON CONFLICT ({', '.join(('run_id',) + CELL_KEY)}) DO UPDATE SET "
                        + ", ".join(f"{c} = excluded.{c}" for c in columns[len(CELL_KEY) + 1:])
                        + f" WHERE {REPLACEABLE} AND excluded.error IS NULL",
                        (target.id, *tuple(row)),
                    )
                self._copy_invocations(other, run.id, target.id)
                self._copy_router_traces(other, run.id, target.id)
            cells_added += self.cell_counts(target.id)[0] - before
        return runs_added, cells_added

    def _copy_router_traces(self, other: "Store", source_run: int, target_run: int) -> None:
        """Merging: the source run's router traces of cells that have none here (the cell kept here
        is then the source's, or the same probe answered by the same model)."""
        with other._guard(f"reading the router traces of run id {source_run}"):
            if not other._has_table("router_traces"):
                return
            rows = other.conn.execute("SELECT family, length, depth, sample, shape, data FROM router_traces "
                                      "WHERE run_id = ?", (source_run,)).fetchall()
        for row in rows:
            self.conn.execute("INSERT OR IGNORE INTO router_traces (run_id, family, length, depth, sample, "
                              "shape, data) VALUES (?,?,?,?,?,?,?)", (target_run, *tuple(row)))

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
        return Transaction(self.conn)


def _same_sweep(a: Run, b: Run) -> bool:
    """Whether two runs' cells may be pooled: what `open_run` checks before resuming a run."""
    return (a.settings == b.settings and a.model_spec == b.model_spec
            and a.model_fingerprint == b.model_fingerprint)


def _cell_label(cell: dict) -> str:
    depth = cell.get("depth")
    depth = f"{depth:g}" if isinstance(depth, (int, float)) else depth
    return (f"cell {cell.get('family')} length {cell.get('length')} depth {depth}% "
            f"sample {cell.get('sample')}")


def _storable(value):
    """`value`, with any lone UTF-16 surrogate in a str (JSON such as "\\ud800" from a server)
    replaced by U+FFFD: SQLite stores UTF-8 only, and one such character must not stop a sweep."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value
