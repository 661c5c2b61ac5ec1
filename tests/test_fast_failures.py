"""Fast failures (issue 19 item 4): what can be checked without torch is checked before torch is
imported, and a finished demo reruns without loading its model.

Each CLI case runs in a fresh interpreter whose import system refuses torch: a command that
imports torch before it checks its input fails with that ImportError instead of its own one-line
error, so the test sees the order, not a timing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctxprobe.backends.native import NativeBackend
from ctxprobe.demo import run_demo

ROOT = Path(__file__).resolve().parents[1]

_DRIVER = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("TORCH-IMPORTED-BEFORE-THE-ERROR")
        return None

sys.meta_path.insert(0, NoTorch())
from ctxprobe.cli import main
main(sys.argv[1:], prog_name="ctxprobe")
"""


def _cli(*args):
    env = {k: v for k, v in os.environ.items() if k != "CTXPROBE_DEBUG"}   # one-line errors
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", _DRIVER, *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture
def no_config(tmp_path):
    empty = tmp_path / "empty-checkpoint"
    empty.mkdir()
    return str(empty)


@pytest.mark.parametrize("args, says", [
    (["inspect", "/no/such/checkpoint"], "/no/such/checkpoint: no such checkpoint directory"),
    (["inspect", "NO_CONFIG"], "no config.json"),
    (["inspect", "NO_CONFIG/model.pt"], "pickle checkpoints are refused"),
    (["bench", "/no/such/checkpoint"], "/no/such/checkpoint: no such checkpoint directory"),
    (["bench", "NO_CONFIG"], "no config.json"),
    (["bench", "--preset", "tiny", "--length", "4kk"], "--length"),
])
def test_bad_input_is_said_before_torch_is_imported(args, says, no_config):
    args = [a.replace("NO_CONFIG", no_config) for a in args]
    done = _cli(*args)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "TORCH-IMPORTED" not in done.stderr
    [line] = done.stderr.strip().splitlines()        # one line, no traceback
    assert line.startswith("error: ") and says in line, line


def test_run_with_bad_input_is_said_before_torch_is_imported(tmp_path):
    db = str(tmp_path / "r.db")
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text("{}")
    for args, says in [
        (["--model", str(no_tokenizer), "--probe", "niah", "--lengths", "1k"], "has no tokenizer.json"),
        (["--model", "/no/such/checkpoint", "--probe", "niah", "--lengths", "1k"], "unknown model spec"),
        (["--model", "builtin", "--probe", "niah", "--lengths", "1kk"], "bad length '1kk'"),
        (["--model", "builtin", "--probe", "niah", "--lengths", "1k", "--depths", "200"], "bad depths"),
        (["--model", "openai:http://127.0.0.1:9/v1", "--api-key-env", "CTXPROBE_TEST_UNSET_KEY",
          "--probe", "niah", "--lengths", "1k"], "CTXPROBE_TEST_UNSET_KEY"),
    ]:
        done = _cli("run", *args, "--db", db, "--quiet")
        assert done.returncode == 2 and "TORCH-IMPORTED" not in done.stderr, done.stderr[-2000:]
        assert says in done.stderr


def test_a_finished_demo_does_not_load_its_model(tmp_path, monkeypatch):
    grid = dict(lengths="512", depths="50", samples=1, progress=False)
    first = run_demo(tmp_path, **grid)
    assert first.cells_done == 1
    loads = []
    real_load = NativeBackend._load

    def counted(self, *a, **k):   # the one place the native backend reads weights
        loads.append(a)
        return real_load(self, *a, **k)

    monkeypatch.setattr(NativeBackend, "_load", counted)
    again = run_demo(tmp_path, **grid)
    assert again.cells_done == 0 and loads == []     # nothing left to run: no weight read
    assert again.effective_length == first.effective_length
    assert again.report.is_file() and again.heatmap.is_file()
    more = run_demo(tmp_path, lengths="512,1k", depths="50", samples=1, progress=False)
    assert more.cells_done == 1 and len(loads) == 1  # a cell to run loads it once
