"""An HTTP run never imports torch: `ctxprobe run --model openai:...` in a fresh interpreter against
the loopback fake server, checked in sys.modules after the run and in `-X importtime`'s log."""

import os
import subprocess
import sys
from pathlib import Path

from fake_openai import FakeOpenAI, answers_for

from ctxprobe.store import Store

ROOT = Path(__file__).resolve().parents[1]
GRID = dict(families=["niah"], lengths=[512, 640], depths=[0, 100], samples=1)

# Runs the CLI as `python -m ctxprobe` would, then reports whether torch (or anything that
# brings it in) was imported; SystemExit from click is the end of the command, not a failure.
_DRIVER = """
import sys
from ctxprobe.cli import main
try:
    main(sys.argv[1:], prog_name="ctxprobe")
except SystemExit as e:
    code = e.code or 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "safetensors"))
print("HEAVY-MODULES", heavy[:3])  # the roots are enough to read a failure
sys.exit(code)
"""


def _run(url, db, *extra):
    command = [sys.executable, "-X", "importtime", "-c", _DRIVER, "run", "--model", f"openai:{url}",
               "--probe", "niah", "--lengths", "512,640", "--depths", "0,100", "--db", str(db),
               "--quiet", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": ""}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def _imported(importtime_log: str) -> set[str]:
    """Module names from `-X importtime` lines: 'import time: self | cumulative | name'."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime_log.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def test_http_run_does_not_import_torch(tmp_path):
    with FakeOpenAI(answers_for(**GRID)) as fake:
        done = _run(fake.url, tmp_path / "a.db")
        assert done.returncode == 0, done.stderr[-2000:]
        assert fake.completions_served() == 4           # the run did send its requests
    assert "HEAVY-MODULES []" in done.stdout, done.stdout
    modules = _imported(done.stderr)
    assert "ctxprobe.backends.http" in modules and "ctxprobe.probes.assemble" in modules  # the log is real
    assert not {m for m in modules if m.split(".")[0] in ("torch", "transformers")}
    with Store(tmp_path / "a.db", readonly=True) as store:
        [run] = store.runs()
        cells = store.cells(run.id)
    assert len(cells) == 4 and all(c["error"] is None and c["score"] == 1.0 for c in cells)


def test_http_run_with_a_local_tokenizer_does_not_import_torch(tmp_path):
    """--tokenizer byte: probes built from a local tokenizer, still no torch."""
    with FakeOpenAI(answers_for(**GRID), tokenize=None) as fake:
        done = _run(fake.url, tmp_path / "b.db", "--tokenizer", "byte")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HEAVY-MODULES []" in done.stdout, done.stdout
