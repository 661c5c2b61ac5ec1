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
    monkeypatch.setattr(T, "pick_threads", lambda concurrency, **measured: next(picks))
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


# -- the readings, from a fake /proc (no timing, no other process involved) ------------------------

def fake_proc(root: Path, *, runnable: int, ours: str = "RS", busy_ticks: int = 0, our_ticks: int = 0) -> Path:
    """A /proc with loadavg (`runnable` tasks in state R now), our threads' states, /proc/stat's
    cpu line with `busy_ticks` of user time, and our utime (stime 0) of `our_ticks`."""
    (root / "self" / "task").mkdir(parents=True, exist_ok=True)
    (root / "loadavg").write_text(f"3.10 2.50 1.20 {runnable}/312 4242\n")
    for i, state in enumerate(ours):
        (root / "self" / "task" / str(100 + i)).mkdir(exist_ok=True)
        (root / "self" / "task" / str(100 + i) / "stat").write_text(f"{100 + i} (py (x) y) {state} 1 2 3\n")
    (root / "stat").write_text(f"cpu  {busy_ticks} 0 0 90000 7 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n")
    rest = " ".join(["0"] * 8)
    (root / "self" / "stat").write_text(f"100 (py (x) y) R 1 2 3 4 5 6 7 8 9 10 {our_ticks} 0 {rest}\n")
    return root


def test_runnable_elsewhere_leaves_out_our_own_threads(tmp_path):
    proc = fake_proc(tmp_path, runnable=5, ours="RRS")     # 5 runnable, 2 of them ours
    assert T.runnable_elsewhere(proc, samples=3, gap=0) == 3
    proc = fake_proc(tmp_path, runnable=1, ours="RRR")     # a read racing our threads: never below 0
    assert T.runnable_elsewhere(proc, samples=1, gap=0) == 0


def test_others_use_is_busy_ticks_less_ours_per_second(tmp_path):
    now = [50.0]
    proc = fake_proc(tmp_path, runnable=0, busy_ticks=1000, our_ticks=300)
    meter = T.OthersUse(proc, clock=lambda: now[0])
    meter.tick = 100.0
    assert meter.since_last() is None                       # nothing to compare with yet
    now[0] += 4.0                                           # 4 s: 1,200 busy ticks, 400 of them ours
    fake_proc(tmp_path, runnable=0, busy_ticks=2200, our_ticks=700)
    assert meter.since_last() == pytest.approx(2.0)         # (1200 - 400) / 100 / 4 s
    now[0] += 0.1                                           # too short a span: no reading, kept for later
    assert meter.since_last() is None
    now[0] += 1.9
    fake_proc(tmp_path, runnable=0, busy_ticks=2200, our_ticks=900)   # only we were busy
    assert meter.since_last() == 0.0


def test_a_process_that_ran_since_the_last_decision_counts_though_it_sleeps_now(tmp_path):
    proc = fake_proc(tmp_path, runnable=1, ours="R")        # nobody else runnable at this moment
    assert T.busy_elsewhere(proc) == 0
    assert T.busy_elsewhere(proc, recent=0.9) == 0.9
    assert T.pick_threads(1, cores=2, busy=T.busy_elsewhere(proc, recent=0.9)) == 1
    assert T.pick_threads(1, cores=2, busy=T.busy_elsewhere(proc, recent=0.2)) == 2
    fake_proc(tmp_path, runnable=3, ours="R")               # two others runnable now: they count
    assert T.busy_elsewhere(proc, recent=0.2) == 2


def test_without_proc_the_load_average_decides(tmp_path, monkeypatch):
    monkeypatch.setattr(T.os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    assert T.busy_elsewhere(tmp_path / "nothing") == 1.5
    assert T.OthersUse(tmp_path / "nothing").since_last() is None
    proc = fake_proc(tmp_path / "odd", runnable=0)
    (proc / "stat").write_text("intr 12 0 0\n")             # not the all-CPU line first
    with pytest.raises(ValueError, match="all-CPU line"):
        T.cpu_ticks(proc)
    assert T.OthersUse(proc).since_last() is None


def test_the_real_proc_reads():
    busy, ours = T.cpu_ticks()
    assert busy > 0 and ours >= 0
    assert T.runnable_elsewhere(samples=1) >= 0


# -- OpenMP's workers sleep rather than spin --------------------------------------------------------

def test_passive_waits_unless_the_user_chose_or_torch_is_loaded():
    env = {}
    assert T.passive_waits(env, modules={}) and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "active"}
    assert not T.passive_waits(env, modules={}) and env == {"OMP_WAIT_POLICY": "active"}
    env = {}
    assert not T.passive_waits(env, modules={"torch": object()}) and env == {}


@pytest.mark.parametrize("chosen, spins", [(None, "0"), ("ACTIVE", None)])
def test_the_native_backend_loads_torch_with_passive_waits(chosen, spins):
    """libgomp prints the settings it read when torch loads it (OMP_DISPLAY_ENV=VERBOSE); without
    a policy it spins 300,000 rounds (GOMP_SPINCOUNT), with PASSIVE none."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(OMP_DISPLAY_ENV="VERBOSE", PYTHONPATH=str(ROOT), **({"OMP_WAIT_POLICY": chosen} if chosen else {}))
    script = ("from ctxprobe.backends import open_backend\n"
              "open_backend('builtin').close()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = dict(line.strip().split(" = ", 1) for line in done.stderr.splitlines()
                 if line.strip().startswith(("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")))
    if "GOMP_SPINCOUNT" not in shown:
        pytest.skip("this torch's OpenMP runtime is not libgomp (no GOMP_SPINCOUNT to read)")
    assert shown["OMP_WAIT_POLICY"] == f"'{chosen or 'PASSIVE'}'"
    if spins is not None:
        assert shown["GOMP_SPINCOUNT"] == f"'{spins}'"
    else:
        assert shown["GOMP_SPINCOUNT"] != "'0'"


def test_demo_threads_option_reaches_the_runner(runner, tmp_path, monkeypatch):
    import torch

    applied, apply = [], T.ThreadPlan.apply
    monkeypatch.setattr(T.ThreadPlan, "apply", lambda self: applied.append((self.requested, apply(self)))
                        or applied[-1][1])
    before = torch.get_num_threads()
    try:
        result = runner.invoke(main, ["demo", "--out", str(tmp_path), "--lengths", "512", "--depths", "0",
                                      "--samples", "1", "--quiet", "--threads", "1"])
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    assert applied and all(a == (1, 1) for a in applied)
