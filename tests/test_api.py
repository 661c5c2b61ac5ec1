"""`ctxprobe.run(config)`, the Python API under `ctxprobe run` and `ctxprobe demo`: the same rows
as the CLI, Ctrl-C as Interrupted with every finished cell stored, a run name whose settings
differ refused before anything is written, and `import ctxprobe` still free of torch."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

import ctxprobe
from ctxprobe.cli import main
from ctxprobe.errors import UserError
from ctxprobe.store import Store

ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("family", "length", "depth", "sample", "seed", "probe_hash", "score", "strict", "lenient",
            "exact", "logprob", "first_rank", "response", "response_kind", "generation", "prompt_tokens",
            "error")


def rows(db):
    with Store(db, readonly=True) as store:
        [run] = store.runs()
        return run, [tuple(c[k] for k in COMPARED) for c in store.cells(run.id)]


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_run_on_the_builtin_model_stores_the_rows_the_cli_stores(runner, tmp_path):
    cli_db, api_db = tmp_path / "cli.db", tmp_path / "api.db"
    result = runner.invoke(main, ["run", "--model", "builtin", "--probe", "niah,kv", "--lengths", "512,1k",
                                  "--depths", "0,100", "--quiet", "--db", str(cli_db)])
    assert result.exit_code == 0, result.output
    grid = ctxprobe.Grid.parse("niah,kv", "512,1k", depths="0,100")
    r = ctxprobe.run(ctxprobe.RunConfig("builtin", grid, db=str(api_db)))
    cli_run, cli_rows = rows(cli_db)
    api_run, api_rows = rows(api_db)
    assert api_rows == cli_rows and len(api_rows) == 8
    assert r.name == cli_run.name == api_run.name          # same model and settings: same run name
    assert api_run.settings == cli_run.settings
    assert (r.stats.finished, r.stats.errored, r.stats.skipped) == (8, 0, 0)
    assert r.summary in result.output                       # the CLI prints what the API returns
    assert len(r.cells) == 8 and r.message is None and r.ranks == 1

    again = ctxprobe.run(ctxprobe.RunConfig("builtin", grid, db=str(api_db)))   # resumes: nothing to do
    assert (again.stats.finished, again.stats.skipped) == (0, 8)
    assert "already holds every cell asked for" in again.message


def test_ctrl_c_during_the_sweep_is_interrupted_with_the_finished_cells_stored(tmp_path, monkeypatch):
    import ctxprobe.sweep.run

    scored = []
    score_cell = ctxprobe.sweep.run.score_cell

    def score_once_then_stop(*args):   # Ctrl-C lands in the main thread, after the first cell
        if scored:
            raise KeyboardInterrupt
        scored.append(1)
        return score_cell(*args)

    monkeypatch.setattr(ctxprobe.sweep.run, "score_cell", score_once_then_stop)
    config = ctxprobe.RunConfig("builtin", ctxprobe.Grid.parse("niah", "512,1k"), db=str(tmp_path / "r.db"),
                                name="stopped")
    with pytest.raises(ctxprobe.Interrupted) as stop:
        ctxprobe.run(config)
    assert isinstance(stop.value, KeyboardInterrupt)        # code that stops on Ctrl-C still does
    assert stop.value.run_name == "stopped" and stop.value.stored == len(scored) == 1
    assert str(stop.value) == ("interrupted: 1 cell(s) of run stopped are stored; rerun the same "
                               "command to resume")
    with Store(tmp_path / "r.db", readonly=True) as store:
        run = store.get_run("stopped")
        [invocation] = store.invocations(run.id)
        assert (invocation.cells_pending, invocation.cells_done) == (2, 1)   # recorded as it ended

    monkeypatch.setattr(ctxprobe.sweep.run, "score_cell", score_cell)
    resumed = ctxprobe.run(config)
    assert (resumed.stats.finished, resumed.stats.skipped) == (1, 1)
    assert "adding 1 cell(s) to existing run stopped" in resumed.message


def test_a_run_name_made_with_other_settings_is_refused_before_anything_is_written(tmp_path):
    from ctxprobe.sweep import OtherSettings

    db = tmp_path / "r.db"
    ctxprobe.run(ctxprobe.RunConfig("builtin", ctxprobe.Grid.parse("niah", "512"), db=str(db), name="mine"))
    before = digest(db)
    other = ctxprobe.RunConfig("builtin", ctxprobe.Grid.parse("niah", "512", seed=3), db=str(db), name="mine")
    with pytest.raises(OtherSettings) as refused:
        ctxprobe.run(other)
    assert isinstance(refused.value, UserError)              # the CLI's one line and exit 2
    assert "run 'mine'" in str(refused.value) and "(seed differ)" in str(refused.value)
    assert "pass another --name" in str(refused.value)
    assert digest(db) == before


def test_the_cli_says_interrupted_and_exits_130_through_the_api(tmp_path):
    """The same stop from a shell: one line on stderr, exit 130, the stored cell kept."""
    driver = f"""
import sys
from ctxprobe.backends.native import NativeBackend
def stop(self, probes):
    raise KeyboardInterrupt
NativeBackend.run_group = stop
from ctxprobe.cli import main
main(["run", "--model", "builtin", "--probe", "niah", "--lengths", "512", "--quiet", "--db", {str(tmp_path / "r.db")!r}],
     prog_name="ctxprobe")
"""
    done = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=_env())
    assert done.returncode == 130, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("interrupted: 0 cell(s) of run builtin-")
    assert "Traceback" not in done.stderr


def test_import_ctxprobe_and_its_api_names_do_not_import_torch():
    code = ("import sys, ctxprobe; ctxprobe.run, ctxprobe.RunConfig, ctxprobe.Grid, ctxprobe.NativeOptions; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _env():
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": ""}
