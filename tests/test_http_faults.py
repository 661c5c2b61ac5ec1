"""Fault injection: a real loopback server misbehaves on a schedule (5xx, 429 with Retry-After in
both forms, resets, truncated and non-JSON bodies, hangs, drip, huge bodies, redirects to a second
server that records what it receives), and for each fault we check the requests made, the TCP
connections used (keep-alive), what is stored, that nothing is lost or doubled, and that the API
key is sent to the server's own origin only and written nowhere.

The sweeps run with one worker (--concurrency 1) so that the schedule meets the cells in order,
and with the byte tokenizer (the fake's own), so that every request the fake logs is a completion
or the setup's GET /models. Waits go through a sleep hook; no outcome depends on timing except
the deadline rows, whose server outlasts the client's timeout by a wide margin.
"""

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI, answers_for

from ctxprobe.backends.http import HttpBackend
from ctxprobe.store import Store
from ctxprobe.sweep import Grid, open_run, run_sweep

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-faults-2b7e151628aed2a6abf71588"
FRAGMENTS = [KEY[i:i + 12] for i in range(0, len(KEY) - 11, 4)]  # no record may hold even 12 chars
GRID = dict(families=["niah"], lengths=[512], depths=[0.0, 100.0], samples=2)   # 4 cells
ANSWERS = answers_for(**GRID)


def assert_no_key(*texts, where=""):
    for text in texts:
        data = text if isinstance(text, bytes) else str(text).encode()
        for fragment in FRAGMENTS:
            assert fragment.encode() not in data, f"a piece of the API key in {where}"


def assert_no_key_in_files(folder: Path):
    """Every file the run left: the database with its -wal and -shm, exports, report, baseline."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert_no_key(path.read_bytes(), where=path.name)


def completion_log(fake):
    return [r for r in fake.log if r["path"].split("?")[0].endswith("completions")]


# (id, schedule, backend settings, fake settings, completion requests, errored cells, error text,
#  TCP connections used by the completions, waits asked of the sleep hook)
ROWS = [
    ("5xx", ["500", "502", "503", "504"], dict(retries=4), {}, 8, 0, None, 1, ["backoff"] * 4),
    ("5xx-until-given-up", ["503", "503", "503"], dict(retries=2), {}, 6, 1,
     r"HTTP 503 .* \(gave up after 3 attempts\)", 1, ["backoff"] * 2),
    ("429-delta-seconds", ["429"], {}, dict(retry_after="7"), 5, 0, None, 1, [7.0]),
    ("429-http-date", ["429-date"], {}, dict(retry_after_date_in=30.0), 5, 0, None, 1, ["date"]),
    ("reset", ["reset"], {}, {}, 5, 0, None, 2, ["backoff"]),
    ("reset-until-given-up", ["reset", "reset"], dict(retries=1), {}, 5, 1,
     "closed the connection|reset by peer", 3, ["backoff"]),
    ("truncated", ["truncated"], {}, {}, 5, 0, None, 2, ["backoff"]),
    ("non-json", ["html"], {}, {}, 4, 1, "malformed JSON", 1, []),
    ("malformed-json", ["malformed"], {}, {}, 4, 1, "malformed JSON", 1, []),
    ("hang", ["hang"], dict(timeout=1.0), dict(hang_seconds=20.0), 5, 0, None, 2, ["backoff"]),
    ("drip", ["drip"], dict(timeout=1.0, retries=0), dict(drip_interval=0.25, drip_for=20.0),
     4, 1, "timed out after 1 s", 2, []),
    ("huge", ["huge"], {}, {}, 4, 1, "larger than 1048576 bytes", 2, []),
    ("huge-without-length", ["huge-stream"], {}, {}, 4, 1, "larger than 1048576 bytes", 2, []),
    ("huge-under-a-raised-cap", ["huge"], dict(max_response_bytes=4 << 20), {}, 4, 0, None, 1, []),
    ("redirect-302-other-port", ["redirect"], {}, dict(redirect_status=302), 4, 1,
     "redirects to another origin", 1, []),
    ("redirect-307-other-port", ["redirect"], {}, dict(redirect_status=307), 4, 1,
     "redirects to another origin", 1, []),
    ("redirect-308-other-host", ["redirect"], {}, dict(redirect_status=308, redirect_to="localhost"), 4, 1,
     "redirects to another origin", 1, []),
    ("redirect-same-origin", ["redirect-same"], {}, {}, 5, 0, None, 1, []),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_each_fault(tmp_path, row):
    name, schedule, backend_kw, fake_kw, requests, errored, error_text, connections, waits = row
    waited = []
    with FakeOpenAI(ANSWERS, faults=schedule, keep_alive=True, **fake_kw) as fake, \
            FakeOpenAI(ANSWERS, keep_alive=True) as recorder:
        if fake_kw.get("redirect_to") == "localhost":   # the same server under another host name
            fake.redirect_to = fake.origin.replace("127.0.0.1", "localhost")
        elif "redirect_to" not in fake_kw:
            fake.redirect_to = recorder.origin
        kw = dict(retry_base=0.001, timeout=30.0, concurrency=1, tokenizer_path="byte",
                  environ={"FAULT_KEY": KEY}, api_key_env="FAULT_KEY", sleep=waited.append)
        kw.update(backend_kw)
        backend = HttpBackend(fake.url, **kw)
        db = tmp_path / "run" / "r.db"
        db.parent.mkdir()
        spec = Grid(**GRID)
        started = time.monotonic()
        with Store(db) as store:
            run = open_run(store, backend, spec, model_spec=f"openai:{fake.url}")
            stats = run_sweep(store, run, backend, spec, progress=False)
            cells = store.cells(run.id)
        seconds = time.monotonic() - started
        log = completion_log(fake)
        # A second invocation with a healthy server retries the errored cells, and only those.
        fake.faults.clear()
        with Store(db) as store:
            again = run_sweep(store, run, backend, spec, progress=False)
            after = store.cells(run.id)
            with sqlite3.connect(db) as conn:  # one row per cell: nothing doubled
                rows = conn.execute("SELECT COUNT(*), COUNT(DISTINCT family || length || depth || sample) "
                                    "FROM cells").fetchone()
        backend.close()
        requests_again = len(completion_log(fake)) - len(log)
        recorded = list(recorder.log)
        other_host = [r for r in fake.log if r["headers"].get("Host", "").startswith("localhost")]

    assert len(log) == requests, [r["path"] for r in log]
    assert len({r["conn"] for r in log}) == connections      # keep-alive; a broken connection is replaced
    assert stats.finished == len(cells) == 4 and stats.errored == errored
    failed = [c for c in cells if c["error"]]
    assert len(failed) == errored
    for cell in failed:
        assert re.search(error_text, cell["error"]), cell["error"]
        assert cell["score"] is None and cell["response"] == ""
    assert all(c["lenient"] == 1.0 for c in cells if not c["error"])
    assert again.finished == errored and again.skipped == 4 - errored and again.errored == 0
    assert requests_again == errored
    assert rows == (4, 4) and all(c["lenient"] == 1.0 for c in after)   # nothing lost or doubled

    # Waits: the server's Retry-After (seconds or date), else the policy's (tiny) backoff.
    assert len(waited) == len(waits)
    for want, got in zip(waits, waited):
        if want == "date":
            assert 20.0 < got <= 31.0       # the date is 30 s ahead, to the second
        elif want == "backoff":
            assert 0.0 < got < 0.1
        else:
            assert got == want
    if name == "drip":  # the deadline ended the cell, not the server's patience
        assert seconds < fake_kw["drip_for"] - 5

    # The key went to the server's origin with every request, and nowhere else.
    assert {r["headers"].get("Authorization") for r in fake.log} == {f"Bearer {KEY}"}
    assert recorded == [] and other_host == []
    assert_no_key_in_files(tmp_path)


def test_a_same_origin_redirect_is_followed_a_bounded_number_of_times(tmp_path):
    # A server that redirects to itself forever: three hops are followed, then the cell errors.
    with FakeOpenAI(ANSWERS, faults=["redirect-same"] * 4, keep_alive=True) as fake:
        backend = HttpBackend(fake.url, retry_base=0.001, concurrency=1, tokenizer_path="byte",
                              environ={"FAULT_KEY": KEY}, api_key_env="FAULT_KEY")
        result = backend.run_group([_probe()])[0]
        backend.close()
        log = completion_log(fake)
    assert "more than 3 redirects" in result.error
    assert len(log) == 4 and {r["headers"]["Authorization"] for r in log} == {f"Bearer {KEY}"}


def _probe():
    from ctxprobe.probes import load_tokenizer, make_probe

    return make_probe("niah", 512, 0.0, seed=0, sample=0, tokenizer=load_tokenizer(None))


# -- the whole CLI, as a CI job runs it --------------------------------------------------

def ctxprobe(*args, env_key=KEY, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAULT_KEY": env_key, "OPENAI_API_KEY": ""}
    return subprocess.run([sys.executable, "-m", "ctxprobe", *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=cwd)


def run_args(url, db, *extra):
    return ["run", "--model", f"openai:{url}", "--probe", "niah", "--lengths", "512",
            "--depths", "0,100", "--samples", "2", "--db", str(db), "--api-key-env", "FAULT_KEY",
            "--tokenizer", "byte", "--concurrency", "1", "--quiet", *extra]


def test_a_cli_sweep_through_faults_writes_the_key_nowhere(tmp_path):
    # Requests meet, in order: a reset, then a cross-origin redirect on its retry (cell 1
    # errored), a 429, then an answer quoting the key (cell 2), a huge body (cell 3 errored), a
    # clean answer (cell 4). Two of four errored: not more than half, so the run exits 0; the
    # rerun retries exactly those two.
    out = tmp_path / "out"
    out.mkdir()
    db = out / "r.db"
    schedule = ["reset", "redirect", "429", "leak-auth", "huge"]
    with FakeOpenAI(ANSWERS, faults=schedule, keep_alive=True) as fake, \
            FakeOpenAI(ANSWERS, keep_alive=True) as recorder:
        fake.redirect_to = recorder.origin
        first = ctxprobe(*run_args(fake.url, db, "--name", "faulty", "--retries", "2"))
        served = len(completion_log(fake))
        second = ctxprobe(*run_args(fake.url, db, "--name", "faulty", "--retries", "2"))
        served_again = len(completion_log(fake)) - served
        recorded = list(recorder.log)
        auth = {r["headers"].get("Authorization") for r in fake.log}
    assert first.returncode == 0, first.stderr
    assert "4 cell(s) done now (2 errored)" in first.stdout
    assert served == 6                       # 4 cells + the reset's and the 429's retries
    assert second.returncode == 0 and "2 cell(s) done now (0 errored), 2 already stored" in second.stdout
    assert served_again == 2
    assert recorded == [] and auth == {f"Bearer {KEY}"}

    outputs = [first.stdout, first.stderr, second.stdout, second.stderr]
    for args in (["runs"], ["export", "faulty", "--format", "jsonl", "-o", str(out / "cells.jsonl")],
                 ["export", "faulty", "--format", "csv", "-o", str(out / "cells.csv")],
                 ["report", "faulty", "-o", str(out / "report.html")],
                 ["baseline", "faulty", "-o", str(out / "base.json")]):
        done = ctxprobe(*args, "--db", str(db))
        assert done.returncode == 0, done.stderr
        outputs += [done.stdout, done.stderr]
    assert_no_key(*outputs, where="the CLI's output")
    assert_no_key_in_files(out)
    cells = [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]
    assert len(cells) == 4 and all(c["error"] is None for c in cells)
    assert any("[redacted]" in c["response"] for c in cells)   # the quoted key, scrubbed


def test_a_cli_run_where_most_cells_errored_exits_3_with_one_line(tmp_path):
    db = tmp_path / "r.db"
    with FakeOpenAI(ANSWERS, faults=["500"] * 3, keep_alive=True) as fake:
        done = ctxprobe(*run_args(fake.url, db, "--retries", "0"))
        assert done.returncode == 3, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert lines == [lines[0]] and lines[0].startswith("error: 3 of the 4 cell(s) run now errored")
        assert "4 cell(s) done now (3 errored)" in done.stdout     # the results are stored
        again = ctxprobe(*run_args(fake.url, db, "--retries", "0"))   # a healthy server: exit 0
    assert again.returncode == 0, again.stderr
    assert "3 cell(s) done now (0 errored), 1 already stored" in again.stdout
    with Store(db, readonly=True) as store:
        [run] = store.runs()
        assert store.cell_counts(run.id) == (4, 0)


def test_a_cli_run_where_every_cell_errored_exits_3_and_half_is_not_enough(tmp_path):
    with FakeOpenAI(ANSWERS, faults=["500"] * 4, keep_alive=True) as fake:
        every = ctxprobe(*run_args(fake.url, tmp_path / "a.db", "--retries", "0"))
        fake.faults[:] = ["500", "500"]
        half = ctxprobe(*run_args(fake.url, tmp_path / "b.db", "--retries", "0"))
    assert every.returncode == 3 and "error: 4 of the 4 cell(s)" in every.stderr
    assert half.returncode == 0, half.stderr    # 2 of 4: not more than half


def test_a_redirect_at_setup_is_refused_with_one_line_and_the_key_stays_home(tmp_path):
    with FakeOpenAI(ANSWERS, model_faults=["redirect"], keep_alive=True) as fake, \
            FakeOpenAI(ANSWERS, keep_alive=True) as recorder:
        fake.redirect_to = recorder.origin
        done = ctxprobe(*run_args(fake.url, tmp_path / "r.db"))
        recorded = list(recorder.log)
        served = len(completion_log(fake))
    assert done.returncode == 2
    assert done.stderr.startswith("error: server ") and "redirects to another origin" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert recorded == [] and served == 0
    assert_no_key(done.stdout, done.stderr)
