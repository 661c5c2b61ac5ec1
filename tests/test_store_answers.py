"""Each cell keeps its gold answers: stored by the sweep, migrated into old databases as NULL,
exported (a JSON list in JSONL, a JSON string in CSV), merged, frozen into baselines, ignored
by compare, and shown escaped beside the response in the report."""

import csv
import io
import json
import sqlite3

import pytest
from fake_openai import FakeOpenAI, answers_for

from ctxprobe.analysis.baseline import read_baseline, write_baseline
from ctxprobe.analysis.compare import compare
from ctxprobe.analysis.report import build_report, failing_examples
from ctxprobe.backends.base import CellResult
from ctxprobe.cli import main
from ctxprobe.sweep.cells import Cell
from ctxprobe.store import CELL_KEYS, Store
from ctxprobe.store.migrations import LATEST, current_version, migrate
from ctxprobe.sweep import score_cell

RUN = dict(model_spec="m", model_fingerprint="fp", backend={"kind": "native"},
           tokenizer_fingerprint="tok", version="0.1.0", command="ctxprobe run", settings={"seed": 0})
LATER = ("answers", "response_kind", "generation", "informative_rank", "server_prompt_tokens",
         "finish_reason", "truncated", "reasoning_tokens", "output_tokens", "ttft", "decode_rate")
OLD_COLUMNS = [k for k in CELL_KEYS if k not in LATER]  # version 1


def cell(sample=0, answers=("1234567",), score=1.0, response=" 1234567", **extra):
    row = dict(family="niah", length=64, depth=50.0, sample=sample, seed=0, probe_hash=f"h{sample}",
               score=score, strict=score, lenient=score, exact=None, logprob=None, first_rank=None,
               answers=list(answers) if isinstance(answers, tuple) else answers, response=response,
               prompt_tokens=64, latency=0.01, error=None)
    row.update(extra)
    return row


def old_database(path, samples=(0,)):
    """A database at schema version 1 (before answers) holding one run and a cell per sample."""
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, up_to=1) == [1]
    conn.execute("INSERT INTO runs (name, created, model_spec, model_fingerprint, backend, "
                 "tokenizer_fingerprint, version, command, settings) "
                 "VALUES ('old', '2026-01-01T00:00:00Z', 'm', 'fp', '{}', 'tok', '0.1.0', 'c', '{}')")
    for sample in samples:
        row = cell(sample=sample)
        conn.execute(f"INSERT INTO cells (run_id, {', '.join(OLD_COLUMNS)}, finished) "
                     f"VALUES (1, {', '.join('?' * len(OLD_COLUMNS))}, 'now')",
                     [row[k] for k in OLD_COLUMNS])
    conn.close()
    return path


def test_an_old_database_migrates_on_open_and_new_cells_get_answers(tmp_path):
    path = old_database(tmp_path / "old.db")
    with Store(path) as store:
        assert current_version(store.conn) == LATEST
        run = store.get_run("old")
        [old] = store.cells(run.id)
        assert old["answers"] is None and old["response"] == " 1234567"
        store.put_cell(run.id, cell(sample=1, answers=["a <b>", "ünï"]))
        store.put_cell(run.id, cell(sample=2, answers=[]))
        assert [c["answers"] for c in store.cells(run.id)] == [None, ["a <b>", "ünï"], []]
        assert [tuple(c) for c in store.cells(run.id)] == [CELL_KEYS] * 3


def test_a_read_only_reader_sees_an_old_database_without_writing_it(tmp_path):
    path = old_database(tmp_path / "old.db")
    with Store(path, readonly=True) as store:
        [old] = store.cells(store.get_run("old").id)
        assert old["answers"] is None and old["score"] == 1.0
    conn = sqlite3.connect(path)
    assert current_version(conn) == 1
    assert "answers" not in {r[1] for r in conn.execute("PRAGMA table_info(cells)")}


def test_score_cell_stores_the_probe_answers_even_for_errors():
    from ctxprobe.probes import load_tokenizer, make_probe

    probe = make_probe("vartrack", 512, 50.0, tokenizer=load_tokenizer(None))
    assert len(probe.answers) > 1  # a multi-answer family
    c = Cell("vartrack", 512, 50.0, 0)
    right = score_cell(c, probe, CellResult(response=" " + " ".join(probe.answers), prompt_tokens=512), 0)
    failed = score_cell(c, probe, CellResult(error="HTTP 500"), 0)
    assert right["answers"] == failed["answers"] == probe.answers
    assert right["answers"] is not probe.answers  # a copy: the store never aliases the probe
    assert right["lenient"] == 1.0 and failed["score"] is None


def test_a_sweep_stores_answers_and_exports_them(tmp_path, runner, monkeypatch):
    from ctxprobe.probes import load_tokenizer, make_probe

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    db = str(tmp_path / "r.db")
    grid = dict(families=["niah"], lengths=[512], depths=[0, 100], samples=1)
    with FakeOpenAI(answers_for(**grid)) as fake:
        result = runner.invoke(main, ["run", "--model", f"openai:{fake.url}", "--probe", "niah",
                                      "--lengths", "512", "--depths", "0,100", "--quiet", "--db", db,
                                      "--name", "a"])
        assert result.exit_code == 0, result.output
    tok = load_tokenizer(None)
    gold = {d: make_probe("niah", 512, d, tokenizer=tok).answers for d in (0.0, 100.0)}

    out = runner.invoke(main, ["export", "a", "--db", db, "--format", "jsonl"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert {r["depth"]: r["answers"] for r in rows} == gold
    assert all(r["score"] == 1.0 for r in rows)

    out = runner.invoke(main, ["export", "a", "--db", db, "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(out.output)))
    assert {float(r["depth"]): json.loads(r["answers"]) for r in rows} == gold


def test_export_of_old_cells_leaves_answers_empty(tmp_path, runner):
    db = str(old_database(tmp_path / "old.db"))
    jsonl = runner.invoke(main, ["export", "old", "--db", db, "--format", "jsonl"])
    assert jsonl.exit_code == 0, jsonl.output
    assert json.loads(jsonl.output)["answers"] is None
    [row] = csv.DictReader(io.StringIO(runner.invoke(main, ["export", "old", "--db", db]).output))
    assert row["answers"] == "" and list(row) == ["run", *CELL_KEYS]


def test_merge_of_old_and_new_databases_keeps_what_each_stored(tmp_path):
    old = old_database(tmp_path / "old.db", samples=(0, 1))
    with Store(tmp_path / "new.db") as new:
        run = new.create_run(name="old", **{**RUN, "settings": {}, "backend": {}, "command": "c"})
        new.put_cell(run.id, cell(sample=2, answers=["x", "y"]))
    with Store(tmp_path / "out.db") as out:
        with Store(old, must_exist=True) as source:
            assert out.merge_from(source) == (1, 2)
        with Store(tmp_path / "new.db", must_exist=True) as source:
            assert out.merge_from(source) == (0, 1)
        cells = out.cells(out.get_run("old").id)
    assert [c["answers"] for c in cells] == [None, None, ["x", "y"]]


def test_baselines_keep_answers_and_old_files_still_load(tmp_path):
    with Store(tmp_path / "r.db") as store:
        run = store.create_run(name="a", **RUN)
        store.put_cell(run.id, cell(sample=0, answers=["7"]))
        cells = store.cells(run.id)
    path = write_baseline(tmp_path / "new.json", run, cells)
    assert read_baseline(path)[1] == cells

    record = json.loads(path.read_text())
    for c in record["cells"]:
        del c["answers"]  # as written before answers were stored
    old = tmp_path / "old.json"
    old.write_text(json.dumps(record))
    [loaded] = read_baseline(old)[1]
    assert loaded["answers"] is None and loaded["score"] == 1.0


def test_compare_ignores_answers():
    a = [cell(sample=s, answers=["1"], score=1.0) for s in range(20)]
    b = [cell(sample=s, answers=None if s % 2 else ["other"], score=float(s >= 10)) for s in range(20)]
    without = [{k: v for k, v in c.items() if k != "answers"} for c in b]
    with_answers, reference = compare(a, b), compare(a, without)
    assert with_answers == reference
    assert with_answers.unpaired_a == with_answers.unpaired_b == 0
    assert [c.pairs for c in with_answers.cells] == [20] and with_answers.regressions


def test_report_shows_gold_beside_the_response_escaped():
    script = "<script>alert(1)</script>"
    cells = [cell(sample=0, answers=["<b>gold</b>", "second"], score=0.0, response=script + " 42"),
             cell(sample=1, answers=None, score=0.0, response=None),
             cell(sample=2, score=1.0)]
    part = failing_examples(cells, "niah")
    assert "<script" not in part and "<b>gold" not in part
    # One row per failing cell; gold answers (one per line) then the response, both escaped.
    rows = part.split("<tr>")[2:]
    assert len(rows) == 2
    gold_then_response = ["<pre>&lt;b&gt;gold&lt;/b&gt;\nsecond</pre>",
                          "<pre>&lt;script&gt;alert(1)&lt;/script&gt; 42</pre>"]
    assert rows[0].index(gold_then_response[0]) < rows[0].index(gold_then_response[1])
    assert "<pre>(not stored)</pre>" in rows[1] and "<pre>(no response stored)</pre>" in rows[1]
    assert "<th>gold answer(s)</th><th>generated (greedy)</th><th>teacher-forced guess</th>" in part

    from ctxprobe.store import Run

    run = Run(id=1, name="r", created="now", **{k: v for k, v in RUN.items() if k != "settings"})
    page = build_report(run, [{**c, "length": n} for c in cells for n in (64, 128)])
    assert "&lt;b&gt;gold&lt;/b&gt;" in page and "<script" not in page.lower()


@pytest.mark.parametrize("answers", ["1234567", [1, 2]])
def test_put_cell_refuses_answers_that_are_not_a_list_of_strings(tmp_path, answers):
    with Store(tmp_path / "r.db") as store:
        run = store.create_run(name="a", **RUN)
        with pytest.raises(AssertionError):
            store.put_cell(run.id, cell(answers=answers))
