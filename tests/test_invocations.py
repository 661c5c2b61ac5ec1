"""A run is one question (issue 19 item 2): two grids with the same model and settings grow one
run, and every invocation that adds to it is recorded (command, time, version, cells added),
shown by `runs` and the report, and announced by `run` when it adds to an existing run."""

import sqlite3

from ctxprobe import __version__
from ctxprobe.cli import main
from ctxprobe.store import Store
from ctxprobe.store.migrations import migrate

FIRST = ["--lengths", "512", "--depths", "50"]
SECOND = ["--lengths", "1k", "--depths", "0", "--samples", "2"]


def run(runner, db, grid, *quiet):
    result = runner.invoke(main, ["run", "--model", "builtin", "--probe", "niah", *grid, "--db", str(db),
                                  *quiet])
    assert result.exit_code == 0, result.output
    return result


def test_every_invocation_is_recorded_and_shown(runner, tmp_path):
    db = tmp_path / "r.db"
    first = run(runner, db, FIRST)
    assert "existing run" not in first.output
    second = run(runner, db, SECOND)
    with Store(db, readonly=True) as store:
        [r] = store.runs()
        invocations = store.invocations(r.id)
        assert store.cell_counts(r.id) == (3, 0)
    assert f"adding 2 cell(s) to existing run {r.name} (1 stored, by 1 earlier invocation)" in second.stderr
    assert [i.command for i in invocations] == [
        f"ctxprobe run --model builtin --probe niah --lengths 512 --db {db}",   # 50: the default
        f"ctxprobe run --model builtin --probe niah {' '.join(SECOND)} --db {db}"]
    assert [(i.cells_pending, i.cells_done, i.cells_errored) for i in invocations] == [(1, 1, 0), (2, 2, 0)]
    assert all(i.version == __version__ and i.ended >= i.started for i in invocations)
    again = run(runner, db, SECOND)                       # nothing left: said, and nothing written
    assert f"run {r.name} already holds every cell asked for (3 stored, by 2 earlier invocations)" in again.stderr

    listing = runner.invoke(main, ["runs", "--db", str(db)]).stdout.splitlines()
    assert listing[0].split()[-3:] == ["invocations", "last", "invocation"]
    with Store(db, readonly=True) as store:
        invocations = store.invocations(r.id)
    assert len(invocations) == 2 and listing[1].split()[-2:] == ["2", invocations[-1].started]

    out = tmp_path / "report.html"
    assert runner.invoke(main, ["report", r.name, "--db", str(db), "-o", str(out)]).exit_code == 0
    page = out.read_text()
    section = page[page.index("Invocations (2)"):page.index("Effective context length")]
    assert "--lengths 512 --db" in section and "--lengths 1k --depths 0 --samples 2" in section
    assert "1 of 1 added" in section and "2 of 2 added" in section
    assert "existing run" not in run(runner, db, SECOND, "--quiet").stderr   # --quiet: status lines off


def test_runs_from_before_keep_their_first_command_and_merge_copies_invocations(tmp_path):
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old, isolation_level=None)
    migrate(conn, up_to=2)
    conn.execute("INSERT INTO runs (name, created, model_spec, model_fingerprint, backend, "
                 "tokenizer_fingerprint, version, command, settings) VALUES "
                 "('old', '2026-01-01T00:00:00Z', 'm', 'fp', '{}', 'tok', '0.0.9', 'ctxprobe run x', '{}')")
    conn.close()
    with Store(old, readonly=True) as store:              # not migrated: no table, no invocations
        assert store.invocations(1) == []
    with Store(old) as store:                             # migrated: the run's own command, uncounted
        [inv] = store.invocations(1)
        assert (inv.started, inv.command, inv.version) == ("2026-01-01T00:00:00Z", "ctxprobe run x", "0.0.9")
        assert inv.cells_pending is None and "not counted" in inv.added()
        store.end_invocation(store.start_invocation(1, command="ctxprobe run y", version="0.1.0",
                                                    cells_pending=4), cells_done=4, cells_errored=1)
    merged = tmp_path / "merged.db"
    for _ in range(2):                                     # merging twice adds no duplicates
        with Store(merged) as out, Store(old, readonly=True) as source:
            out.merge_from(source)
    with Store(merged, readonly=True) as store:
        invocations = store.invocations(store.get_run("old").id)
    assert [i.command for i in invocations] == ["ctxprobe run x", "ctxprobe run y"]
    assert invocations[1].added() == "4 of 4 added, 1 errored"
