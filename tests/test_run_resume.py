"""A sweep SIGKILLed midway and rerun loses no cell and duplicates none: its final rows equal
those of an uninterrupted run."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from fake_openai import FakeOpenAI, answers_for

from ctxprobe.cli import main
from ctxprobe.store import Store

ROOT = Path(__file__).resolve().parents[1]
GRID = dict(families=["niah"], lengths=[512, 576], depths=[0, 50, 100], samples=4)
TOTAL = 2 * 3 * 4
COMPARED = ("family", "length", "depth", "sample", "seed", "probe_hash", "score", "strict",
            "lenient", "exact", "response", "prompt_tokens", "error")


def command(url, db):
    return [sys.executable, "-m", "ctxprobe", "run", "--model", f"openai:{url}", "--probe", "niah",
            "--lengths", "512,576", "--depths", "0,50,100", "--samples", "4", "--concurrency", "2",
            "--db", str(db), "--quiet", "--tokenizer", "byte"]  # no /tokenize round trips: faster


def env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": ""}


def stored(db) -> int:
    if not Path(db).exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def rows(db):
    with Store(db, readonly=True) as store:
        [run] = store.runs()
        return run.name, [tuple(c[k] for k in COMPARED) for c in store.cells(run.id)]


def test_killed_sweep_resumes_to_the_same_rows(tmp_path, runner, monkeypatch):
    killed_db, clean_db = tmp_path / "killed.db", tmp_path / "clean.db"
    with FakeOpenAI(answers_for(**GRID), delay=0.15) as fake:
        proc = subprocess.Popen(command(fake.url, killed_db), env=env(), cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while stored(killed_db) < 4 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        at_kill = stored(killed_db)
        assert 0 < at_kill < TOTAL, f"the kill did not land midway ({at_kill} of {TOTAL} stored)"

        resumed = subprocess.run(command(fake.url, killed_db), env=env(), cwd=tmp_path,
                                 capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        assert f"{at_kill} already stored" in resumed.stdout
        # The uninterrupted reference runs in-process: a second interpreter start adds nothing.
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        clean = runner.invoke(main, command(fake.url, clean_db)[3:])
        assert clean.exit_code == 0, clean.output

    name_k, killed = rows(killed_db)
    name_c, uninterrupted = rows(clean_db)
    assert name_k == name_c                     # the same command found the same run
    assert len(killed) == len(set(r[:4] for r in killed)) == TOTAL
    assert killed == uninterrupted
    assert all(r[COMPARED.index("score")] == 1.0 for r in killed)


def test_ctrl_c_exits_at_once_and_says_how_to_resume(tmp_path):
    db = tmp_path / "r.db"
    with FakeOpenAI(answers_for(**GRID), delay=5.0) as fake:   # every answer takes 5 s
        proc = subprocess.Popen(command(fake.url, db), env=env(), cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while fake.completions_served() < 2 and time.time() < deadline:  # both workers waiting
            time.sleep(0.02)
        start = time.time()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        elapsed = time.time() - start
    assert proc.returncode == 130, err
    assert elapsed < 3.0, f"took {elapsed:.1f} s to stop: it waited for the requests in flight"
    assert "interrupted: 0 cell(s)" in err and "rerun the same command to resume" in err


def test_two_shards_starting_together_on_one_database_share_the_run(tmp_path, monkeypatch):
    # Both processes look the run up, find none, and create it: the second insert used to end
    # in a traceback (sqlite3.IntegrityError on the unique name) instead of joining the run.
    from types import SimpleNamespace

    from ctxprobe.sweep import Grid, open_run

    backend = SimpleNamespace(identity={"kind": "fake"}, settings={}, model_fingerprint="m",
                              tokenizer=SimpleNamespace(fingerprint="t"))
    spec = Grid(families=["niah"], lengths=[512], depths=[50.0])
    db = tmp_path / "r.db"
    with Store(db) as first, Store(db) as second:
        mine = open_run(first, backend, spec, model_spec="m", name="shared")
        calls = []
        real_find = second.find_run

        def find_late(name):  # the first lookup ran before `first` created the run
            calls.append(name)
            return None if len(calls) == 1 else real_find(name)

        monkeypatch.setattr(second, "find_run", find_late)
        theirs = open_run(second, backend, spec, model_spec="m", name="shared")
    assert theirs.id == mine.id and len(calls) == 2
