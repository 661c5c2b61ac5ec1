"""The SQLite results store: migrations, runs, cells, resume keys, refusals and merging."""

import os
import sqlite3

import pytest

from ctxprobe.errors import UserError
from ctxprobe.store import CELL_KEYS, Store
from ctxprobe.store.migrations import LATEST, MIGRATIONS

RUN = dict(model_spec="openai:http://127.0.0.1:1/v1", model_fingerprint="server-model:m",
           backend={"kind": "http", "api_key_env": "OPENAI_API_KEY"}, tokenizer_fingerprint="byte-utf8-v1",
           version="0.1.0", command="ctxprobe run --model x", settings={"seed": 0})


def cell(family="niah", length=64, depth=50.0, sample=0, **extra):
    row = dict(family=family, length=length, depth=depth, sample=sample, seed=0, probe_hash="abc",
               score=1.0, strict=1.0, lenient=1.0, exact=None, logprob=None, first_rank=None,
               response=" 123", prompt_tokens=length, latency=0.01, error=None)
    row.update(extra)
    return row


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "r.db") as s:
        yield s


def test_new_database_is_migrated_once_in_wal_mode(tmp_path):
    path = tmp_path / "r.db"
    Store(path).close()
    Store(path).close()  # reopening must not apply anything again
    conn = sqlite3.connect(path)
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_version")]
    assert versions == [v for v, _, _ in MIGRATIONS]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_runs_by_name_and_id(store):
    run = store.create_run(name="a", **RUN)
    store.create_run(name="b", **RUN)
    assert store.get_run("a") == run
    assert store.get_run(run.id) == run and store.get_run(str(run.id)) == run
    assert [r.name for r in store.runs()] == ["a", "b"]
    assert run.backend == RUN["backend"] and run.settings == {"seed": 0}
    assert run.created.endswith("Z")
    with pytest.raises(UserError, match=r"no run named 'zzz'.*known runs: a, b"):
        store.get_run("zzz")


def test_cells_round_trip_with_the_contract_keys(store):
    run = store.create_run(name="a", **RUN)
    store.put_cell(run.id, cell(depth=0.0, exact=True, logprob=-0.5, first_rank=1))
    store.put_cell(run.id, cell(depth=100.0, exact=False, score=0.0, response="no"))
    cells = store.cells(run.id)
    assert [tuple(c) for c in cells] == [CELL_KEYS] * 2
    assert [c["depth"] for c in cells] == [0.0, 100.0]
    assert cells[0]["exact"] is True and cells[1]["exact"] is False
    assert cells[0]["logprob"] == -0.5 and cells[1]["response"] == "no"


def test_a_cell_is_stored_once_and_errors_are_not_done(store):
    run = store.create_run(name="a", **RUN)
    store.put_cell(run.id, cell(sample=0, error="HTTP 500", score=None))
    store.put_cell(run.id, cell(sample=1))
    assert store.done_keys(run.id) == {("niah", 64, 50.0, 1)}
    store.put_cell(run.id, cell(sample=0))  # the retry replaces the errored row
    assert store.cell_counts(run.id) == (2, 0)
    assert store.done_keys(run.id) == {("niah", 64, 50.0, 0), ("niah", 64, 50.0, 1)}


def test_database_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "r.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version VALUES (?, 'from the future', 'now')", (LATEST + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(UserError, match="newer ctxprobe"):
        Store(path)
    with pytest.raises(UserError, match="newer ctxprobe"):
        Store(path, readonly=True)


def test_read_only_path_is_refused(tmp_path):
    if os.geteuid() == 0:  # root ignores file modes; /proc refuses everyone
        path = "/proc/ctxprobe-test.db"
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        Store(folder / "r.db").close()
        os.chmod(folder / "r.db", 0o444)
        os.chmod(folder, 0o555)
        path = folder / "r.db"
    with pytest.raises(UserError, match="read-only"):
        Store(path)


def test_missing_directory_and_non_database_are_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Store(tmp_path / "nope" / "r.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="not a ctxprobe results database"):
        Store(junk)
    with pytest.raises(UserError, match="no results database"):
        Store(tmp_path / "absent.db", must_exist=True)


def test_readonly_reader_sees_committed_cells(tmp_path):
    path = tmp_path / "r.db"
    with Store(path) as writer:
        run = writer.create_run(name="a", **RUN)
        writer.put_cell(run.id, cell())
        with Store(path, readonly=True) as reader:
            assert reader.cells(run.id) == writer.cells(run.id)


def test_merge_joins_shards_without_duplicates(tmp_path):
    a, b, out = (Store(tmp_path / f"{n}.db") for n in ("a", "b", "out"))
    ra, rb = a.create_run(name="sweep", **RUN), b.create_run(name="sweep", **RUN)
    a.put_cell(ra.id, cell(sample=0))
    a.put_cell(ra.id, cell(sample=1, error="timeout", score=None))
    b.put_cell(rb.id, cell(sample=1))            # fixes a's errored cell
    b.put_cell(rb.id, cell(sample=2))
    assert out.merge_from(a) == (1, 2)
    assert out.merge_from(b) == (0, 1)
    assert out.merge_from(b) == (0, 0)           # merging twice adds nothing
    [run] = out.runs()
    cells = out.cells(run.id)
    assert [(c["sample"], c["error"]) for c in cells] == [(0, None), (1, None), (2, None)]


def test_merge_keeps_same_named_runs_with_other_settings_apart(tmp_path):
    a, out = Store(tmp_path / "a.db"), Store(tmp_path / "out.db")
    out.create_run(name="sweep", **RUN)
    other = dict(RUN, settings={"seed": 1})
    ra = a.create_run(name="sweep", **other)
    a.put_cell(ra.id, cell())
    assert out.merge_from(a) == (1, 1)
    assert out.merge_from(a) == (0, 0)
    assert [r.name for r in out.runs()] == ["sweep", "sweep@a"]
    assert out.get_run("sweep@a").settings == {"seed": 1}


def test_merge_keeps_same_named_runs_of_other_weights_apart(tmp_path):
    # Same name, spec and settings but other weights (a checkpoint directory retrained in
    # place): `ctxprobe run` refuses to resume such a run, and merge used to pool the two.
    a, out = Store(tmp_path / "a.db"), Store(tmp_path / "out.db")
    mine = out.create_run(name="sweep", **RUN)
    out.put_cell(mine.id, cell(sample=0))
    ra = a.create_run(name="sweep", **dict(RUN, model_fingerprint="server-model:retrained"))
    a.put_cell(ra.id, cell(sample=1))
    assert out.merge_from(a) == (1, 1)
    assert [(r.name, len(out.cells(r.id))) for r in out.runs()] == [("sweep", 1), ("sweep@a", 1)]
