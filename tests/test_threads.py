"""Torch threads for the native runner (ctxprobe/backends/threads.py): the free cores of the
affinity mask shared among concurrent passes, decided again every few seconds, or `--threads`."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctxprobe.backends import threads as T
from ctxprobe.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cores, busy, concurrency, want", [
    (2, 0.0, 1, 2), (2, 0.4, 1, 2), (2, 0.6, 1, 1), (2, 1.0, 1, 1), (2, 7.0, 1, 1),
    (16, 3.0, 2, 6), (16, 0.0, 4, 4), (8, 0.0, 16, 1), (1, 0.0, 1, 1), (1, 3.0, 1, 1)])
def test_free_cores_shared_among_passes(cores, busy, concurrency, want):
    assert T.pick_threads(concurrency, cores=cores, busy=busy) == want


def test_cores_are_the_affinity_mask():
    assert T.cores_available() == len(os.sched_getaffinity(0))


@pytest.fixture
def spinner():
    """A CPU-bound process beside the test, running or waiting for a CPU all the time."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    stat = Path(f"/proc/{proc.pid}/stat")
    deadline = time.monotonic() + 60
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "R" and time.monotonic() < deadline:
        time.sleep(0.01)
    yield proc
    proc.kill()
    proc.wait()


def test_a_busy_process_beside_takes_a_core(spinner):
    busy = T.busy_elsewhere()
    assert busy >= 1.0        # the spinner is runnable at every read; our own threads are not counted
    assert T.pick_threads(1, cores=2, busy=busy) == 1


def test_requested_threads_are_set_and_kept(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(T, "pick_threads", lambda *a, **k: pytest.fail("a fixed number is not picked"))
    try:
        plan = T.ThreadPlan(1)
        assert plan.apply() == 1 and torch.get_num_threads() == 1
        assert plan.apply() == 1
    finally:
        torch.set_num_threads(before)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="threads must be a whole number"):
            T.ThreadPlan(bad)


def test_automatic_plan_decides_again_after_a_while(monkeypatch):
    import torch

    before = torch.get_num_threads()
    picks, now = iter([2, 2, 1]), [1000.0]
    monkeypatch.setattr(T, "pick_threads", lambda concurrency: next(picks))
    monkeypatch.setattr(T.time, "monotonic", lambda: now[0])
    try:
        plan = T.ThreadPlan(None)
        assert plan.apply() == 2
        now[0] += T.DECIDE_EVERY / 2
        assert plan.apply() == 2                      # too soon: no new decision
        now[0] += T.DECIDE_EVERY
        assert plan.apply() == 2                      # decided again: still 2
        now[0] += T.DECIDE_EVERY
        assert plan.apply() == 1 and torch.get_num_threads() == 1   # a process started beside
    finally:
        torch.set_num_threads(before)


def test_one_cpu_in_the_affinity_mask_gives_one_thread():
    script = ("import os, torch\n"
              "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
              "torch.set_num_threads(4)\n"
              "from ctxprobe.backends.threads import ThreadPlan\n"
              "print(ThreadPlan(None).apply(), torch.get_num_threads())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1"]


def test_run_threads_option_reaches_the_runner(runner, tmp_path, monkeypatch):
    import torch

    applied, apply = [], T.ThreadPlan.apply
    monkeypatch.setattr(T.ThreadPlan, "apply", lambda self: applied.append((self.requested, apply(self)))
                        or applied[-1][1])
    before = torch.get_num_threads()
    try:
        result = runner.invoke(main, ["run", "--model", "builtin", "--probe", "niah", "--lengths", "512",
                                      "--depths", "0,100", "--db", str(tmp_path / "a.db"), "--quiet",
                                      "--threads", "1"])
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    assert applied and all(a == (1, 1) for a in applied)
    bad = runner.invoke(main, ["run", "--model", "builtin", "--probe", "niah", "--lengths", "512",
                               "--db", str(tmp_path / "b.db"), "--threads", "0"])
    assert bad.exit_code == 2 and "--threads" in bad.output and not (tmp_path / "b.db").exists()
