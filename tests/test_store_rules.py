"""A cell stored without error is final: no errored try replaces it, whichever process writes it
(two identical sweeps at once, a retry in flight when a resumed sweep finishes the cell)."""

import os
import subprocess
import sys
from pathlib import Path

from fake_openai import FakeOpenAI, answers_for
from scripted_server import ScriptedServer

from ctxprobe.store import Store

ROOT = Path(__file__).resolve().parents[1]
RUN = dict(model_spec="openai:http://127.0.0.1:1/v1", model_fingerprint="server-model:m",
           backend={"kind": "http"}, tokenizer_fingerprint="byte-utf8-v1", version="0.1.0",
           command="ctxprobe run", settings={"seed": 0})


def cell(sample, error=None, response=" 123"):
    return dict(family="niah", length=64, depth=50.0, sample=sample, seed=0, probe_hash="abc",
                score=None if error else 1.0, strict=None if error else 1.0, response=response,
                prompt_tokens=64, latency=0.01, error=error)


def test_a_finished_cell_is_kept_and_an_errored_one_is_replaced(tmp_path):
    with Store(tmp_path / "r.db") as store:
        run = store.create_run(name="a", **RUN)
        assert store.put_cell(run.id, cell(0, response=" first")) is True
        assert store.put_cell(run.id, cell(0, error="HTTP 500")) is False       # a worse try
        assert store.put_cell(run.id, cell(0, response=" second")) is False     # finished is final
        assert store.put_cell(run.id, cell(1, error="timeout")) is True
        assert store.put_cell(run.id, cell(1, error="HTTP 429")) is True        # the latest error
        [c0, c1] = store.cells(run.id)
        assert (c0["response"], c0["error"], c0["score"]) == (" first", None, 1.0)
        assert c1["error"] == "HTTP 429"
        assert store.put_cell(run.id, cell(1)) is True                          # a retry that worked
        assert store.cell_counts(run.id) == (2, 0)


# One writer process: opens the database, finds or creates run "sweep", then stores cells.
WRITER = """
import sys, time, sqlite3
from pathlib import Path
from ctxprobe.store import Store
db, mode, keys, other_done = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
run_fields = dict(model_spec="m", model_fingerprint="f", backend={}, tokenizer_fingerprint="t",
                  version="0", command="c", settings={})
with Store(db) as store:
    try:
        run = store.find_run("sweep") or store.create_run(name="sweep", **run_fields)
    except sqlite3.IntegrityError:
        run = store.find_run("sweep")
    def put(sample):
        error = None if mode == "ok" else f"HTTP 500 from {mode}"
        store.put_cell(run.id, dict(family="niah", length=64, depth=50.0, sample=sample, seed=0,
                                    score=None if error else 1.0, response=mode, error=error))
    if mode == "ok":
        for sample in range(keys):
            put(sample)
    else:  # errors over every key until the other writer is done, then once more
        while True:
            done = other_done.exists()
            for sample in range(keys):
                put(sample)
            if done:
                break
print("written")
"""


def test_two_processes_cannot_replace_finished_cells_with_errors(tmp_path):
    db, done = tmp_path / "r.db", tmp_path / "ok-writer-done"
    Store(db).close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def start(mode):
        return subprocess.Popen([sys.executable, "-c", WRITER, str(db), mode, "40", str(done)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    failing = start("failing")        # writes errored cells all along, and last
    finishing = start("ok")           # writes every cell once, without error, at the same time
    out, err = finishing.communicate(timeout=120)
    assert finishing.returncode == 0 and "written" in out, err
    done.touch()
    out, err = failing.communicate(timeout=120)
    assert failing.returncode == 0 and "written" in out, err

    with Store(db, readonly=True) as store:
        [run] = store.runs()
        cells = store.cells(run.id)
    assert len(cells) == 40
    assert [(c["error"], c["response"]) for c in cells] == [(None, "ok")] * 40


def sweep(url, db, *extra):
    return [sys.executable, "-m", "ctxprobe", "run", "--model", f"openai:{url}", "--probe", "niah",
            "--lengths", "512", "--depths", "0,50,100", "--samples", "2", "--name", "shared",
            "--db", str(db), "--quiet", "--tokenizer", "byte", "--retries", "0", *extra]


def test_a_retry_in_flight_cannot_undo_a_sweep_that_finished_the_cells(tmp_path):
    # Two identical sweeps on one database: the first plans every cell and sends its requests to a
    # server that stalls; the second finishes every cell meanwhile; then the first one's requests
    # fail. Its errored results must not replace the finished cells.
    db = tmp_path / "r.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": ""}
    grid = dict(families=["niah"], lengths=[512], depths=[0, 50, 100], samples=2)
    with FakeOpenAI(answers_for(**grid)) as good, ScriptedServer(500, b'{"error": "boom"}', hold=True) as bad:
        slow = subprocess.Popen(sweep(bad.url, db, "--timeout", "100"), env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert bad.arrived.wait(60), "the stalled sweep never sent a request"
        fast = subprocess.run(sweep(good.url, db), env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert fast.returncode == 0, fast.stderr
        assert "6 cell(s) done now (0 errored)" in fast.stdout
        bad.release.set()
        out, err = slow.communicate(timeout=120)
        assert bad.posts >= 1
    # Its failed tries changed nothing, and it says so: every cell was already stored.
    assert slow.returncode == 0, err
    assert "0 cell(s) done now (0 errored), 6 already stored" in out

    with Store(db, readonly=True) as store:
        run = store.get_run("shared")
        cells = store.cells(run.id)
    assert len(cells) == 6
    assert [c["error"] for c in cells] == [None] * 6
    assert [c["score"] for c in cells] == [1.0] * 6
