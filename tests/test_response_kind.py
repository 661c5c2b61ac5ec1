"""What a native cell shows is what the model did (issue 19 item 1).

A teacher-forced cell's response is the argmax at each gold-answer position with the gold answer
fed in: at 8K the built-in model's guess is ' 605133' while greedy generation writes 32 spaces.
Such a cell is labelled `teacher-forced`, and a failing one also stores the real generation,
which the report shows beside the labelled guess."""

import json
import re
import sqlite3

import pytest

from ctxprobe.cli import main
from ctxprobe.store import CELL_KEYS, Store
from ctxprobe.store.migrations import LATEST, current_version, migrate


@pytest.fixture(scope="module")
def demo_like_run(tmp_path_factory):
    """The built-in model at 1K (passes) and 8K (fails), depth 50, as the demo runs it."""
    from click.testing import CliRunner

    db = tmp_path_factory.mktemp("kind") / "r.db"
    result = CliRunner().invoke(main, ["run", "--model", "builtin", "--probe", "niah", "--lengths", "1k,8k",
                                       "--depths", "50", "--name", "kind", "--db", str(db), "--quiet"])
    assert result.exit_code == 0, result.output
    with Store(db, readonly=True) as store:
        cells = {c["length"]: c for c in store.cells(store.get_run("kind").id)}
    return db, cells


def test_a_failing_cell_stores_the_real_generation_beside_the_labelled_guess(demo_like_run):
    from ctxprobe.backends import open_backend
    from ctxprobe.sweep.cells import Cell, build_probes
    from ctxprobe.runner import generate

    _, cells = demo_like_run
    short, long = cells[1024], cells[8192]
    assert short["exact"] is True and long["exact"] is False
    assert short["response_kind"] == long["response_kind"] == "teacher-forced"
    assert short["generation"] is None                     # passing cells need none
    # What greedy decoding of the same prompt writes, up to 32 tokens, decoded by the model itself.
    backend = open_backend("builtin")
    [(_, probe)] = build_probes([Cell("niah", 8192, 50.0, 0)], seed=0, tokenizer=backend.tokenizer)
    context, question = backend.render(probe)
    ids = generate(backend.model, context + question, 32, stop_ids=backend._stop_ids)
    written = backend.tokenizer.decode([i for i in ids if i not in backend._stop_ids])
    assert long["generation"] == written
    assert long["generation"] != long["response"]          # the guess is not what the model writes
    assert long["response"].strip().endswith("605133") and not long["generation"].strip()


def test_the_report_shows_the_generation_and_labels_the_guess(demo_like_run, runner, tmp_path):
    db, cells = demo_like_run
    out = tmp_path / "report.html"
    result = runner.invoke(main, ["report", "kind", "--db", str(db), "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    failing = page[page.index("Failing examples"):]
    assert "<th>generated (greedy)</th><th>teacher-forced guess</th>" in failing
    assert "it is not a text the model writes" in failing
    row = failing.split("<tr>")[2]                          # the 8K cell
    generated, forced = re.findall(r"<pre>(.*?)</pre>", row, re.S)[1:3]
    assert generated == "(empty response: 32 spaces)"
    assert forced == cells[8192]["response"] and forced.strip() == "605133"


def test_exports_carry_the_kind_and_the_generation(demo_like_run, runner):
    db, cells = demo_like_run
    result = runner.invoke(main, ["export", "kind", "--db", str(db), "--format", "jsonl"])
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["response_kind"] for r in rows] == ["teacher-forced"] * 2
    assert [r["generation"] for r in rows] == [None, cells[8192]["generation"]]


def test_generate_failing_zero_turns_it_off_and_http_cells_are_generated(runner, tmp_path):
    # multikey with uuid values fails on the built-in model already at 1K (it retrieves digits)
    db = tmp_path / "r.db"
    args = ["run", "--model", "builtin", "--probe", "multikey", "--lengths", "1k", "--param",
            "multikey.value_kind=uuid", "--db", str(db), "--quiet"]
    assert runner.invoke(main, [*args, "--name", "off", "--generate-failing", "0"]).exit_code == 0
    assert runner.invoke(main, [*args, "--name", "on", "--generate-failing", "4"]).exit_code == 0
    with Store(db, readonly=True) as store:
        [off] = store.cells(store.get_run("off").id)
        [on] = store.cells(store.get_run("on").id)
        assert store.get_run("on").backend["generate_failing"] == 4
    assert off["exact"] is False and off["generation"] is None
    assert on["exact"] is False and on["generation"] is not None
    from ctxprobe.backends import open_backend
    tok = open_backend("builtin").tokenizer
    assert 1 <= len(tok.encode(on["generation"])) <= 4      # bounded in tokens


def _version2_database(path):
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, up_to=2)
    conn.execute("INSERT INTO runs (name, created, model_spec, model_fingerprint, backend, "
                 "tokenizer_fingerprint, version, command, settings) "
                 "VALUES ('old', '2026-01-01T00:00:00Z', 'm', 'fp', '{}', 'tok', '0.1.0', 'c', '{}')")
    for sample, exact in ((0, 1), (1, None)):
        conn.execute("INSERT INTO cells (run_id, family, length, depth, sample, seed, score, exact, "
                     "response, finished) VALUES (1, 'niah', 64, 50, ?, 0, 0, ?, ' 42', 'now')",
                     (sample, exact))
    conn.close()


def test_old_rows_are_labelled_when_read_and_never_rewritten(tmp_path):
    path = tmp_path / "old.db"
    _version2_database(path)
    with Store(path, readonly=True) as store:       # read as it is (no migration)
        kinds = [c["response_kind"] for c in store.cells(1)]
        assert kinds == ["teacher-forced", "generated"]
        assert [c["generation"] for c in store.cells(1)] == [None, None]
    with Store(path) as store:                      # migrated for writing
        assert current_version(store.conn) == LATEST
        assert [tuple(c) for c in store.cells(1)] == [CELL_KEYS] * 2
        assert [c["response_kind"] for c in store.cells(1)] == ["teacher-forced", "generated"]
        raw = store.conn.execute("SELECT response_kind FROM cells ORDER BY sample").fetchall()
        assert [r[0] for r in raw] == [None, None]    # the stored rows were not rewritten


def test_the_demo_report_shows_what_the_model_wrote_at_8k(tmp_path):
    from ctxprobe.demo import run_demo

    r = run_demo(tmp_path, lengths="8k", depths="50", samples=1, progress=False)
    failing = r.report.read_text()
    failing = failing[failing.index("Failing examples"):]
    generated, forced = re.findall(r"<pre>(.*?)</pre>", failing.split("<tr>")[2], re.S)[1:3]
    assert generated == "(empty response: 32 spaces)" and forced.strip() == "605133"
