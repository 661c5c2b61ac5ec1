"""The results store's schema as numbered migrations, each applied once, in order.

Never edit a migration that has shipped: add the next number instead. The `schema_version`
table records every migration applied; a database whose highest version is above the last
one here was written by a newer ctxprobe and is refused rather than misread.
"""

from __future__ import annotations

import sqlite3

# (version, what it does, SQL). Versions are 1, 2, 3, ... with no gaps.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "runs and one result row per cell",
        """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            created TEXT NOT NULL,                 -- ISO 8601, UTC
            model_spec TEXT NOT NULL,
            model_fingerprint TEXT NOT NULL,
            backend TEXT NOT NULL,                 -- JSON object; never holds a secret
            tokenizer_fingerprint TEXT NOT NULL,
            version TEXT NOT NULL,                 -- ctxprobe version that created the run
            command TEXT NOT NULL,                 -- the command line, as typed
            settings TEXT NOT NULL DEFAULT '{}'    -- JSON: what makes two cells comparable
        );
        CREATE TABLE cells (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            family TEXT NOT NULL,
            length INTEGER NOT NULL,
            depth REAL NOT NULL,
            sample INTEGER NOT NULL,
            seed INTEGER NOT NULL,
            probe_hash TEXT,
            score REAL,
            strict REAL,
            lenient REAL,
            exact INTEGER,                         -- 0/1 for teacher-forced cells, else NULL
            logprob REAL,
            first_rank INTEGER,
            response TEXT,
            prompt_tokens INTEGER,
            latency REAL,                          -- seconds
            error TEXT,                            -- NULL when the cell finished cleanly
            finished TEXT NOT NULL,                -- ISO 8601, UTC
            PRIMARY KEY (run_id, family, length, depth, sample)
        );
        """,
    ),
    (
        2,
        "each cell's gold answers",
        """
        ALTER TABLE cells ADD COLUMN answers TEXT;  -- JSON list of strings; NULL in rows from before
        """,
    ),
    (
        3,
        "what a cell's response is, and the real generation of failing teacher-forced cells",
        """
        ALTER TABLE cells ADD COLUMN response_kind TEXT;  -- 'teacher-forced' | 'generated'; NULL before
        ALTER TABLE cells ADD COLUMN generation TEXT;     -- failing teacher-forced cells: greedy output
        """,
    ),
    (
        4,
        "every invocation that added to a run",
        """
        CREATE TABLE invocations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            started TEXT NOT NULL,                 -- ISO 8601, UTC
            command TEXT NOT NULL,                 -- the command line, as typed
            version TEXT NOT NULL,                 -- ctxprobe version of this invocation
            cells_pending INTEGER,                 -- cells it set out to run; NULL: from before 4
            cells_done INTEGER,                    -- cells it stored (errored ones too)
            cells_errored INTEGER,
            ended TEXT                             -- NULL: still running, killed, or from before 4
        );
        CREATE INDEX invocations_by_run ON invocations (run_id, id);
        INSERT INTO invocations (run_id, started, command, version)
            SELECT id, created, command, version FROM runs;  -- runs from before: their first invocation
        """,
    ),
    (
        5,
        "serving stacks: the first informative rank, the server's prompt count, how the answer ended, "
        "reasoning tokens and streamed timings",
        """
        ALTER TABLE cells ADD COLUMN informative_rank INTEGER;      -- rank of the first non-space gold token
        ALTER TABLE cells ADD COLUMN server_prompt_tokens INTEGER;  -- usage.prompt_tokens; NULL: not reported
        ALTER TABLE cells ADD COLUMN finish_reason TEXT;            -- the server's: stop, length, ...
        ALTER TABLE cells ADD COLUMN truncated INTEGER;             -- 1: cut off before any answer, unscored
        ALTER TABLE cells ADD COLUMN reasoning_tokens INTEGER;
        ALTER TABLE cells ADD COLUMN output_tokens INTEGER;
        ALTER TABLE cells ADD COLUMN ttft REAL;                     -- streamed: seconds to the first token
        ALTER TABLE cells ADD COLUMN decode_rate REAL;              -- streamed: tokens/s after the first
        """,
    ),
    (
        6,
        "router traces: per cell, a MoE router's expert load and top-1 margin by prompt position",
        """
        CREATE TABLE router_traces (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            family TEXT NOT NULL,
            length INTEGER NOT NULL,
            depth REAL NOT NULL,
            sample INTEGER NOT NULL,
            shape TEXT NOT NULL,                   -- JSON: MoE layer indices, buckets, experts
            data BLOB NOT NULL,                    -- zlib of int32 load, int32 tokens, float32 margin (router_trace.py)
            PRIMARY KEY (run_id, family, length, depth, sample)
        );
        """,
    ),
]

LATEST = MIGRATIONS[-1][0]

# The oldest schema a read-only Store reads without migrating: every migration after it only
# adds nullable cell columns, which read as NULL, or the invocations and router_traces tables,
# which read as empty where they are missing (Store.invocations, Store.router_traces). Raise it
# with any migration that does more.
READABLE_FROM = 1


def current_version(conn: sqlite3.Connection) -> int:
    """The highest migration applied to this database (0 for a new one)."""
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not has_table:
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return row[0] or 0


def migrate(conn: sqlite3.Connection, up_to: int = LATEST) -> list[int]:
    """Apply every migration above the database's version (and at most `up_to`, which tests
    use to build an old schema), each in its own transaction.

    Returns the versions applied. The caller has already refused databases from the future.
    """
    assert [v for v, _, _ in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        "version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied TEXT NOT NULL)"
    )
    applied = []
    for version, description, sql in MIGRATIONS:
        if version <= current_version(conn) or version > up_to:
            continue
        # executescript() commits first, so run the statements one by one inside BEGIN.
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, description, applied) "
                "VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))",
                (version, description),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(version)
    return applied


def _statements(sql: str) -> list[str]:
    """Split a migration's SQL into statements (migrations hold no ';' inside strings)."""
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
