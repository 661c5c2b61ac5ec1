"""`ctxprobe run` reads the pending cells from the store before it plans or loads: a finished run
reruns without loading the model (same summary, database untouched, not even a plan that could be
refused), a half-finished one loads once and plans for its longest pending cell, and a pending
cell that cannot fit is still refused with the database unchanged."""

import hashlib
import shutil
import sqlite3

import pytest
from click.testing import CliRunner
from tiny_llama import write_checkpoint

from ctxprobe.backends.options import MemoryBudgets
from ctxprobe.runner.memory import RunPlanner
from ctxprobe.backends.native import NativeBackend
from ctxprobe.cli import main
from ctxprobe.store import Store
from ctxprobe.sweep import Grid, longest_pending

GRID = ["--probe", "niah", "--lengths", "256,640", "--depths", "0,50", "--device", "cpu", "--quiet"]
SPEC = Grid(families=["niah"], lengths=[256, 640], depths=[0.0, 50.0])


def longest_extent(backend, cells=None):
    """The backend's extent for the longest of `cells` (default: every cell of SPEC)."""
    return backend.extent(*longest_pending(SPEC, SPEC.cells() if cells is None else cells, backend.tokenizer))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(write_checkpoint(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="module")
def finished(checkpoint, tmp_path_factory):
    """(db holding the whole grid, the output of the run that filled it, its cells by key)."""
    db = tmp_path_factory.mktemp("finished") / "done.db"
    result = CliRunner().invoke(main, ["run", "--model", checkpoint, *GRID, "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "4 cell(s) done now" in result.output
    return db, result.output, cells_by_key(db)


def cells_by_key(db):
    with Store(db, readonly=True) as store:
        [run] = store.runs()
        return {(c["family"], c["length"], c["depth"], c["sample"]): c for c in store.cells(run.id)}


def copy_without(db, tmp_path, length=None):
    """A copy of db with the cells of one length deleted (None: all kept)."""
    out = tmp_path / "r.db"
    shutil.copy(db, out)
    if length is not None:
        conn = sqlite3.connect(out)
        with conn:
            conn.execute("DELETE FROM cells WHERE length = ?", (length,))
        conn.close()
    return out


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def spies(monkeypatch):
    """Records every load_model call and every plan_sweep length; `fail_loads()` makes loads fail."""
    import ctxprobe.runner.load

    calls = {"loads": 0, "plans": [], "fail": False}
    real_load, real_plan = ctxprobe.runner.load.load_model, RunPlanner.plan_sweep

    def load_model(*args, **kwargs):
        calls["loads"] += 1
        assert not calls["fail"], "a finished run loaded the model"
        return real_load(*args, **kwargs)

    def plan_sweep(self, length, **kwargs):
        calls["plans"].append(length)
        return real_plan(self, length, **kwargs)

    monkeypatch.setattr(ctxprobe.runner.load, "load_model", load_model)
    monkeypatch.setattr(RunPlanner, "plan_sweep", plan_sweep)
    return calls


def summary_lines(output):
    """The score tables `run` prints, without its last line (this call's counts and timing)."""
    lines = output.strip().splitlines()
    assert lines[-1].startswith("run ")
    return lines[:-1]


@pytest.mark.parametrize("budget", [[], ["--host-memory", "64KiB"]], ids=["free-memory", "budget-too-small"])
def test_a_finished_run_reruns_without_a_plan_or_a_load(checkpoint, finished, spies, runner, tmp_path, budget):
    done_db, first_output, _ = finished
    db = copy_without(done_db, tmp_path)
    before = digest(db)
    spies["fail"] = True
    # 64 KiB would refuse any plan (see the refusal test): a finished run makes none
    result = runner.invoke(main, ["run", "--model", checkpoint, *GRID, "--db", str(db), *budget])
    assert result.exit_code == 0, result.output
    assert spies["loads"] == 0 and spies["plans"] == []
    assert "0 cell(s) done now" in result.output and "4 already stored" in result.output
    assert summary_lines(result.stdout) == summary_lines(first_output)
    assert digest(db) == before


@pytest.mark.parametrize("missing", [256, 640])
def test_a_half_finished_run_loads_once_and_plans_for_its_longest_pending_cell(
        checkpoint, finished, spies, runner, tmp_path, missing):
    done_db, first_output, reference = finished
    db = copy_without(done_db, tmp_path, length=missing)
    result = runner.invoke(main, ["run", "--model", checkpoint, *GRID, "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "2 cell(s) done now" in result.output and "2 already stored" in result.output
    backend = NativeBackend(checkpoint, device="cpu", memory=MemoryBudgets())
    pending = [c for c in SPEC.cells() if c.length == missing]
    assert spies["loads"] == 1
    assert spies["plans"] == [longest_extent(backend, pending).prefill_tokens]
    if missing == 256:   # shorter than the sweep's longest cell, which is stored
        assert spies["plans"][0] < longest_extent(backend).prefill_tokens
    cells = cells_by_key(db)
    assert cells.keys() == reference.keys()
    for key, cell in cells.items():
        assert cell["error"] is None and cell["exact"] == reference[key]["exact"]
        assert cell["logprob"] == pytest.approx(reference[key]["logprob"], abs=1e-5)
    assert summary_lines(result.stdout) == summary_lines(first_output)


def test_a_pending_cell_that_cannot_fit_is_refused_with_the_db_unchanged(
        checkpoint, finished, spies, runner, tmp_path):
    db = copy_without(finished[0], tmp_path, length=640)
    before = digest(db)
    result = runner.invoke(main, ["run", "--model", checkpoint, *GRID, "--db", str(db),
                                  "--host-memory", "64KiB"])
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: host memory") and "short by" in line
    assert spies["loads"] == 0 and len(spies["plans"]) == 1
    assert digest(db) == before


def test_a_run_with_other_settings_is_refused_before_any_load(checkpoint, finished, spies, runner, tmp_path):
    done_db, _, _ = finished
    db = copy_without(done_db, tmp_path, length=640)
    with Store(db, readonly=True) as store:
        [run_name] = [r.name for r in store.runs()]
    before = digest(db)
    result = runner.invoke(main, ["run", "--model", checkpoint, *GRID, "--db", str(db), "--name", run_name,
                                  "--dtype", "bfloat16"])
    assert result.exit_code == 2, result.output
    assert "made with other settings (backend differ)" in result.output
    assert spies["loads"] == 0 and spies["plans"] == []
    assert digest(db) == before


# --- under torchrun: rank 0 reads the pending cells and every rank loads, or none does -------------

SPY = '''import json, os, sys
import ctxprobe.runner.load
from ctxprobe.runner.memory import RunPlanner

LOG = sys.argv.pop(1)
real_load, real_plan = ctxprobe.runner.load.load_model, RunPlanner.plan_sweep

def note(event, value):
    with open(LOG, "a") as f:
        f.write(json.dumps([int(os.environ["RANK"]), event, value]) + "\\n")

def load_model(*args, **kwargs):
    note("load", None)
    return real_load(*args, **kwargs)

def plan_sweep(self, length, **kwargs):
    note("plan", length)
    return real_plan(self, length, **kwargs)

ctxprobe.runner.load.load_model, RunPlanner.plan_sweep = load_model, plan_sweep
from ctxprobe.cli import main
main()
'''


def torchrun_spied(checkpoint, db, log, tmp_path):
    """`ctxprobe run` on 2 gloo ranks, each noting its loads and plans in log; -> (rc, stdout, notes)."""
    import json
    import os
    import subprocess
    import sys

    from processes import free_port

    script = tmp_path / "spied_ctxprobe.py"
    script.write_text(SPY)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), str(script), str(log), "run", "--model", checkpoint, *GRID, "--db", str(db)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    notes = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return done, notes


@pytest.mark.timeout(150)
def test_torchrun_ranks_load_only_for_pending_cells(checkpoint, finished, tmp_path):
    done_db, first_output, _ = finished
    db = copy_without(done_db, tmp_path)
    done, notes = torchrun_spied(checkpoint, db, tmp_path / "finished.log", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "0 cell(s) done now" in done.stdout and "on 2 ranks" in done.stdout
    assert notes == []                                  # no rank planned or loaded
    assert summary_lines(done.stdout) == summary_lines(first_output)

    db = copy_without(done_db, tmp_path, length=256)
    done, notes = torchrun_spied(checkpoint, db, tmp_path / "half.log", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 cell(s) done now" in done.stdout and "2 already stored" in done.stdout
    pending = [c for c in SPEC.cells() if c.length == 256]
    backend = NativeBackend(checkpoint, device="cpu", memory=MemoryBudgets())
    length = longest_extent(backend, pending).prefill_tokens
    assert sorted(notes) == [[0, "load", None], [0, "plan", length], [1, "load", None], [1, "plan", length]]
    assert cells_by_key(db).keys() == finished[2].keys()
