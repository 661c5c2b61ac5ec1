"""`ctxprobe run --gpu-memory/--host-memory/--offload-dir` on CPU: the native backend plans the
sweep's longest cell before it loads a weight, refuses a budget that cannot fit with one line and
an untouched store, spills to the disk tier when host memory is short (same numbers, no files
left behind), and resumes a run made under other budgets."""

import hashlib
import json

import pytest
from tiny_llama import write_checkpoint

from ctxprobe.backends.options import MemoryBudgets
from ctxprobe.backends.native import NativeBackend
from ctxprobe.cli import main
from ctxprobe.errors import UserError
from ctxprobe.runner.memory import plan_for_checkpoint
from ctxprobe.store import Store
from ctxprobe.sweep import Grid, longest_pending

GRID = ["--probe", "niah,kv", "--lengths", "256,640", "--depths", "0,50", "--device", "cpu", "--quiet"]
SPEC = Grid(families=["niah", "kv"], lengths=[256, 640], depths=[0.0, 50.0])


def longest_extent(backend):
    """The backend's extent for the longest cell of SPEC."""
    return backend.extent(*longest_pending(SPEC, SPEC.cells(), backend.tokenizer))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(write_checkpoint(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="module")
def unbudgeted(checkpoint, tmp_path_factory):
    """A db holding the grid run with no budgets, and its cells by key."""
    from click.testing import CliRunner

    db = str(tmp_path_factory.mktemp("ref") / "ref.db")
    result = CliRunner().invoke(main, ["run", "--model", checkpoint, *GRID, "--db", db])
    assert result.exit_code == 0, result.output
    return db, cells_of(db)[1]


def cells_of(db):
    with Store(db) as store:
        [run] = store.runs()
        return run, {(c["family"], c["length"], c["depth"]): c for c in store.cells(run.id)}


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def disk_budget(checkpoint, offload_dir):
    """A host budget the longest cell fits only with the disk tier: refused without offload_dir."""
    extent = longest_extent(NativeBackend(checkpoint, device="cpu", memory=MemoryBudgets()))
    plan = lambda **kw: plan_for_checkpoint(checkpoint, extent.prefill_tokens, device="cpu",  # noqa: E731
                                            extra_tokens=extent.extra_tokens, **kw)
    for budget in range(plan().host_bytes, 0, -1024):
        try:
            plan(host_budget=budget)
        except UserError:
            plan(host_budget=budget, offload_dir=offload_dir)   # must fit with the disk tier
            return budget
    raise AssertionError("no host budget needs the disk tier")


def test_help_shows_the_budget_flags_with_an_example(runner):
    out = runner.invoke(main, ["run", "--help"]).output
    for flag in ("--gpu-memory", "--host-memory", "--offload-dir"):
        assert flag in out
    assert "Example: ctxprobe run --model" in out and "--gpu-memory 78GiB" in out


def test_a_budget_too_small_is_one_line_before_any_weight_and_stores_nothing(
        checkpoint, unbudgeted, runner, tmp_path, monkeypatch):
    ref_db, _ = unbudgeted
    db = tmp_path / "r.db"
    db.write_bytes(open(ref_db, "rb").read())
    before = digest(db)
    import ctxprobe.runner.load

    loads = []
    monkeypatch.setattr(ctxprobe.runner.load, "load_model", lambda *a, **k: loads.append(a))
    result = runner.invoke(main, ["run", "--model", checkpoint, *GRID, "--db", str(db), "--host-memory", "64KiB",
                                  "--lengths", "256,640,1024"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: host memory"), result.output
    assert "budget is 64.0 KiB, short by" in lines[0] and "Traceback" not in result.output
    assert loads == []                  # refused before a weight was read
    assert digest(db) == before         # the stored run is as it was


def test_short_host_memory_spills_to_disk_with_the_same_numbers(checkpoint, unbudgeted, runner, tmp_path):
    _, reference = unbudgeted
    offload = tmp_path / "offload"
    budget = str(disk_budget(checkpoint, str(tmp_path / "probe-dir")))
    db = str(tmp_path / "r.db")
    refused = runner.invoke(main, ["run", "--model", checkpoint, *GRID, "--db", db, "--host-memory", budget])
    assert refused.exit_code == 2 and "--offload-dir" in refused.output, refused.output
    result = runner.invoke(main, ["run", "--model", checkpoint, *GRID, "--db", db, "--host-memory", budget,
                                  "--offload-dir", str(offload)])
    assert result.exit_code == 0, result.output
    run, cells = cells_of(db)
    assert run.backend["memory"] == {"host_memory": budget, "offload_dir": str(offload)}
    longest = run.backend["longest_plan"]
    assert longest["hidden_tier"] == "disk" or "disk" in longest["kv_tiers"]
    assert cells.keys() == reference.keys()
    for key, cell in cells.items():
        assert cell["error"] is None
        assert cell["exact"] == reference[key]["exact"]
        assert cell["logprob"] == pytest.approx(reference[key]["logprob"], abs=1e-4)
    assert list(offload.iterdir()) == []     # nothing left on disk


def test_budgets_are_provenance_so_a_rerun_under_others_resumes(checkpoint, unbudgeted, runner, tmp_path):
    ref_db, reference = unbudgeted
    db = tmp_path / "r.db"
    db.write_bytes(open(ref_db, "rb").read())
    result = runner.invoke(main, ["run", "--model", checkpoint, *GRID, "--db", str(db), "--host-memory", "8GiB"])
    assert result.exit_code == 0, result.output
    assert "0 cell(s) done now" in result.output and f"{len(reference)} already stored" in result.output


def test_the_plan_covers_the_longest_cell_with_its_template_and_branches(checkpoint):
    backend = NativeBackend(checkpoint, device="cpu", memory=MemoryBudgets())
    assert backend.model is None         # nothing loaded before the plan
    extent = longest_extent(backend)
    from ctxprobe.sweep.cells import build_probes

    longest = [p for _, p in build_probes([c for c in SPEC.cells() if c.length == 640], seed=0,
                                          tokenizer=backend.tokenizer)]
    for probe in longest:
        context, question, answer = backend._branch(probe)
        assert len(context) <= extent.prefill_tokens
        assert len(context) + len(question) + len(answer) - 1 <= extent.prefill_tokens + extent.extra_tokens
    assert not extent.keep_kv            # every probe here has a gold answer: no generation
    backend.prepare(*longest_pending(SPEC, SPEC.cells(), backend.tokenizer))
    assert backend.model is not None and backend.settings["weights"] == "resident"


def test_memory_flags_are_refused_for_a_server(runner, tmp_path):
    result = runner.invoke(main, ["run", "--model", "openai:http://127.0.0.1:9/v1", "--probe", "niah",
                                  "--lengths", "1k", "--db", str(tmp_path / "r.db"), "--gpu-memory", "8GiB"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --gpu-memory, --host-memory and --offload-dir plan the native runner's memory; "
        "an openai: server manages its own: drop them"]


def test_run_records_the_budgets_it_was_given(checkpoint, runner, tmp_path):
    db = str(tmp_path / "r.db")
    result = runner.invoke(main, ["run", "--model", checkpoint, "--probe", "niah", "--lengths", "256",
                                  "--depths", "50", "--device", "cpu", "--quiet", "--db", db,
                                  "--gpu-memory", "1GiB"])   # on CPU a GPU budget is the host's
    assert result.exit_code == 0, result.output
    run, _ = cells_of(db)
    assert run.backend["memory"] == {"gpu_memory": "1GiB"}
    # a pending cell (512): a finished run reruns without a plan (tests/test_run_resume_lazy.py)
    refused = runner.invoke(main, ["run", "--model", checkpoint, "--probe", "niah", "--lengths", "256,512",
                                   "--device", "cpu", "--db", db, "--gpu-memory", "64KiB"])
    assert refused.exit_code == 2 and "error: host memory" in refused.output   # the host's, on a CPU
    assert "--gpu-memory 1GiB" in run.command
    assert json.dumps(run.backend)   # provenance stays plain JSON


@pytest.mark.timeout(150)
def test_torchrun_ranks_plan_their_share_and_stream_kv_from_disk(checkpoint, unbudgeted, tmp_path):
    import os
    import subprocess
    import sys

    from processes import free_port

    _, reference = unbudgeted
    extent = longest_extent(NativeBackend(checkpoint, device="cpu", memory=MemoryBudgets()))
    share = -(-extent.prefill_tokens // 2)
    offload = tmp_path / "offload"
    plan = lambda budget: plan_for_checkpoint(checkpoint, share, device="cpu", host_budget=budget,  # noqa: E731
                                              extra_tokens=extent.extra_tokens, offload_dir=str(offload),
                                              sharded=True)
    budget = next(b for b in range(plan(None).host_bytes, 0, -1024) if "disk" in plan(b).kv_tiers)
    db = tmp_path / "ring.db"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), "-m", "ctxprobe", "run", "--model", checkpoint, *GRID, "--db", str(db),
               "--host-memory", str(budget), "--offload-dir", str(offload)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    run, cells = cells_of(db)
    assert run.backend["ranks"] == 2 and "disk" in run.backend["longest_plan"]["kv_tiers"]
    assert cells.keys() == reference.keys()
    for key, cell in cells.items():
        assert cell["exact"] == reference[key]["exact"], key
        assert cell["logprob"] == pytest.approx(reference[key]["logprob"], abs=1e-4)
    assert list(offload.iterdir()) == []


@pytest.mark.parametrize("device, message", [("cuda", "no CUDA device on this machine"),
                                             ("nonsense", "is not a device")])
def test_a_device_this_machine_lacks_is_one_line(checkpoint, runner, tmp_path, device, message):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    result = runner.invoke(main, ["run", "--model", checkpoint, "--probe", "niah", "--lengths", "256",
                                  "--db", str(tmp_path / "r.db"), "--device", device])
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: --device") and message in line


def test_run_with_an_unwritable_offload_dir_is_one_line_and_stores_nothing(checkpoint, runner, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    db = tmp_path / "r.db"
    budget = str(plan_for_checkpoint(checkpoint, 4096, device="cpu").host_bytes - 1)  # the cell is longer
    result = runner.invoke(main, ["run", "--model", checkpoint, "--probe", "niah", "--lengths", "4k",
                                  "--depths", "0", "--device", "cpu", "--quiet", "--db", str(db),
                                  "--host-memory", budget, "--offload-dir", str(a_file / "sub")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --offload-dir"), result.output
    assert not db.exists() or runner.invoke(main, ["runs", "--db", str(db)]).output.startswith("no runs")
