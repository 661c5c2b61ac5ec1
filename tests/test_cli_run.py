"""`ctxprobe run / runs / export / merge` from the command line: bad input is one line and
exit 2; shards merge into the same rows as one whole run; every command documents an example."""

import csv
import io
import json
import os
import sqlite3

import pytest
from fake_openai import FakeOpenAI, answers_for

from ctxprobe.cli import main
from ctxprobe.commands.run import COMMANDS
from ctxprobe.store import Store
from ctxprobe.store.migrations import LATEST
from processes import free_port

GRID = dict(families=["niah", "kv"], lengths=[640], depths=[0, 50, 100], samples=1)
RUN_ARGS = ["--probe", "niah,kv", "--lengths", "640", "--depths", "0,50,100", "--quiet"]


@pytest.fixture(autouse=True)
def no_ambient_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_model_spec(runner, tmp_path):
    result = runner.invoke(main, ["run", "--model", "gpt-9000", "--db", str(tmp_path / "r.db"), *RUN_ARGS])
    one_line_error(result, "unknown model spec 'gpt-9000'", "openai:")


def test_unreachable_server(runner, tmp_path):
    url = f"openai:http://127.0.0.1:{free_port()}/v1"
    result = runner.invoke(main, ["run", "--model", url, "--db", str(tmp_path / "r.db"), *RUN_ARGS])
    one_line_error(result, "cannot reach server")


def test_database_from_a_newer_ctxprobe(runner, tmp_path):
    db = tmp_path / "r.db"
    Store(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 'future', 'now')", (LATEST + 1,))
    for args in (["run", "--model", "nowhere", *RUN_ARGS], ["runs"], ["export", "x"]):
        one_line_error(runner.invoke(main, args + ["--db", str(db)]), "newer ctxprobe")


def test_read_only_database_path(runner, tmp_path):
    if os.geteuid() == 0:  # root ignores file modes; /proc refuses everyone
        db = "/proc/ctxprobe-test.db"
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        os.chmod(folder, 0o555)
        db = str(folder / "r.db")
    result = runner.invoke(main, ["run", "--model", "openai:http://127.0.0.1:9/v1", "--db", db, *RUN_ARGS])
    one_line_error(result, "read-only")


def test_other_bad_input(runner, tmp_path):
    db = str(tmp_path / "r.db")
    one_line_error(runner.invoke(main, ["runs", "--db", db]), "no results database")
    one_line_error(runner.invoke(main, ["run", "--model", "x", "--probe", "nope", "--lengths", "1k", "--db", db]),
                   "unknown probe family 'nope'")
    one_line_error(runner.invoke(main, ["run", "--model", "x", "--probe", "niah", "--lengths", "1k",
                                        "--shard", "2/2", "--db", db]), "bad --shard")
    Store(db).close()
    one_line_error(runner.invoke(main, ["export", "ghost", "--db", db]), "no run named 'ghost'")


@pytest.mark.parametrize("option, value", [("--retries", "-1"), ("--timeout", "0"),
                                           ("--max-new-tokens", "0")])
def test_bad_http_settings(runner, tmp_path, option, value):
    # --retries -1 used to end in a traceback (AssertionError), --timeout 0 in a misleading
    # "cannot reach server", --max-new-tokens 0 in every cell erroring.
    with FakeOpenAI() as fake:
        result = runner.invoke(main, ["run", "--model", f"openai:{fake.url}", "--db",
                                      str(tmp_path / "r.db"), *RUN_ARGS, option, value])
    one_line_error(result, option)


def test_shards_merge_into_the_whole_run(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with FakeOpenAI(answers_for(**GRID)) as fake:
        model = ["--model", f"openai:{fake.url}"]
        for args in (["--db", "whole.db"], ["--db", "s0.db", "--shard", "0/2"],
                     ["--db", "s1.db", "--shard", "1/2"]):
            result = runner.invoke(main, ["run", *model, *RUN_ARGS, *args])
            assert result.exit_code == 0, result.output
        assert "effective length" in result.output and "depth" in result.output
    merged = runner.invoke(main, ["merge", "merged.db", "s0.db", "s1.db"])
    assert merged.exit_code == 0, merged.output
    assert "s0.db: 1 new run(s), 3 new cell(s)" in merged.output
    assert "s1.db: 0 new run(s), 3 new cell(s)" in merged.output
    again = runner.invoke(main, ["merge", "merged.db", "s1.db"])
    assert "0 new run(s), 0 new cell(s)" in again.output

    def exported(db):
        out = runner.invoke(main, ["export", "1", "--db", db, "--format", "csv"])
        assert out.exit_code == 0, out.output
        return sorted((r["family"], r["depth"], r["sample"], r["probe_hash"], r["score"], r["response"])
                      for r in csv.DictReader(io.StringIO(out.output)))

    assert len(exported("merged.db")) == 6 and exported("merged.db") == exported("whole.db")
    listing = runner.invoke(main, ["runs", "--db", "merged.db"])
    assert "fake-model-" in listing.output and listing.output.count("\n") == 2


def test_run_row_records_provenance(runner, tmp_path):
    db = str(tmp_path / "r.db")
    with FakeOpenAI(answers_for(**GRID)) as fake:
        result = runner.invoke(main, ["run", "--model", f"openai:{fake.url}", *RUN_ARGS, "--db", db,
                                      "--name", "prov", "--api", "completions"])
        assert result.exit_code == 0, result.output
    with Store(db) as store:
        run = store.get_run("prov")
    assert run.model_spec == f"openai:{fake.url}" and '"id": "fake-model"' in run.model_fingerprint
    assert run.backend["api"] == "completions" and run.backend["api_key_env"] is None
    assert run.tokenizer_fingerprint and run.version
    assert run.command.startswith("ctxprobe run --model openai:") and "--api completions" in run.command
    rows = runner.invoke(main, ["export", "prov", "--db", db, "--format", "jsonl"]).output.splitlines()
    keys = set(json.loads(rows[0]))
    assert {"family", "length", "depth", "sample", "seed", "exact", "score", "logprob", "response",
            "error"} <= keys


def test_every_command_ends_its_help_with_an_example(runner):
    for command in COMMANDS:
        help_text = runner.invoke(main, [command.name, "--help"]).output
        assert "Example: ctxprobe " + command.name in help_text, command.name


def test_reading_commands_work_on_a_database_they_cannot_write(runner, tmp_path, monkeypatch):
    # runs, export and merge's inputs only read; they used to open for writing and refuse a
    # read-only file ("pass a writable --db path"). File modes do not bind root, so the check
    # they used to fail is what is made to fail here.
    src = tmp_path / "src.db"
    with Store(src) as store:
        run = store.create_run(name="r", model_spec="m", model_fingerprint="f", backend={},
                               tokenizer_fingerprint="t", version="0", command="c")
        store.put_cell(run.id, dict(family="niah", length=512, depth=50.0, sample=0, seed=0, score=1.0))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if mode & os.W_OK and
                        str(path).startswith(str(src)) else real_access(path, mode, **kw))
    listing = runner.invoke(main, ["runs", "--db", str(src)])
    assert listing.exit_code == 0 and "r " in listing.output, listing.output
    export = runner.invoke(main, ["export", "r", "--db", str(src), "--format", "jsonl"])
    assert export.exit_code == 0 and json.loads(export.output)["score"] == 1.0, export.output
    merged = runner.invoke(main, ["merge", str(tmp_path / "out.db"), str(src)])
    assert merged.exit_code == 0 and "1 new run(s), 1 new cell(s)" in merged.output, merged.output
    one_line_error(runner.invoke(main, ["runs", "--db", str(tmp_path / "out.db-not-there")]),
                   "no results database")
