"""Honest hardware figures (issue 19 item 6): budgets this machine cannot back are planned with a
warning (inspect, bench, run); bench reports MFU only against the device's own known peak; and
load_model(device="cuda") on a machine without CUDA is one UserError line."""

import json
from pathlib import Path

import pytest
import torch

import ctxprobe
from ctxprobe.cli import main
from ctxprobe.errors import UserError

MODEL_DIR = Path(ctxprobe.__file__).parent / "builtin" / "model"

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


def warnings_of(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning: ")]


def too_much() -> str:
    """Four times this machine's memory, in bytes."""
    with open("/proc/meminfo") as f:
        total_kib = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    return str(4 * 1024 * total_kib)


@no_cuda
def test_inspect_plans_for_a_gpu_that_is_not_here_and_says_so(runner):
    result = runner.invoke(main, ["inspect", str(MODEL_DIR), "--length", "4k", "--gpu-memory", "80GiB"])
    assert result.exit_code == 0, result.output
    [line] = warnings_of(result)
    assert "--gpu-memory 80GiB: this machine has no CUDA device; the plan is for a machine with such a GPU" in line
    assert "plan for 4,096 tokens on cuda" in result.stdout          # the what-if plan is still made


def test_host_memory_above_the_machine_is_warned_in_inspect_bench_and_run(runner, tmp_path):
    asked = too_much()
    inspect = runner.invoke(main, ["inspect", str(MODEL_DIR), "--length", "4k", "--host-memory", asked])
    bench = runner.invoke(main, ["bench", "--preset", "tiny", "--length", "256", "--device", "cpu",
                                 "--host-memory", asked])
    run = runner.invoke(main, ["run", "--model", "builtin", "--probe", "niah", "--lengths", "512",
                               "--host-memory", asked, "--device", "cpu", "--db", str(tmp_path / "r.db"),
                               "--quiet"])
    for result in (inspect, bench, run):
        assert result.exit_code == 0, result.output
        [line] = warnings_of(result)
        assert f"--host-memory {asked} is more than this machine's memory" in line
        assert "a plan that uses it will not fit here" in line


def test_gpu_memory_where_the_work_runs_on_the_cpu_is_warned(runner, tmp_path):
    bench = runner.invoke(main, ["bench", "--preset", "tiny", "--length", "256", "--device", "cpu",
                                 "--gpu-memory", "4GiB"])
    run = runner.invoke(main, ["run", "--model", "builtin", "--probe", "niah", "--lengths", "512",
                               "--gpu-memory", "4GiB", "--device", "cpu", "--db", str(tmp_path / "r.db"),
                               "--quiet"])
    for result in (bench, run):
        assert result.exit_code == 0, result.output
        [line] = warnings_of(result)
        assert "--gpu-memory 4GiB:" in line and "the work runs on the CPU" in line
        assert "read as the budget of host memory" in line
    # without budgets, nothing to say
    from ctxprobe.runner.machine import budget_warnings

    assert budget_warnings(device="cpu") == []
    assert budget_warnings(gpu_memory="80GiB", device="cuda:0", cuda=True) == []


def test_bench_on_a_cpu_reports_no_mfu_against_a_gpu_peak(runner):
    plain = runner.invoke(main, ["bench", "--preset", "tiny", "--length", "256", "--device", "cpu", "--json"])
    text = runner.invoke(main, ["bench", "--preset", "tiny", "--length", "256", "--device", "cpu"])
    given = runner.invoke(main, ["bench", "--preset", "tiny", "--length", "256", "--device", "cpu", "--json",
                                 "--peak-tflops", "2"])
    [row] = [json.loads(line) for line in plain.stdout.splitlines() if line.startswith("{")]
    assert row["mfu"] is None and row["peak_tflops"] is None
    assert "MFU     -" in text.stdout and "%  peak GPU" not in text.stdout
    [row] = [json.loads(line) for line in given.stdout.splitlines() if line.startswith("{")]
    assert row["peak_tflops"] == 2 and row["mfu"] == pytest.approx(row["tflops"] / 2)


def test_known_cards_have_their_own_peak():
    from ctxprobe.hardware import bf16_peak_tflops

    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bf16_peak_tflops("NVIDIA GeForce RTX 4090") is None and bf16_peak_tflops(None) is None


@no_cuda
def test_load_model_on_cuda_without_cuda_is_one_user_error():
    from ctxprobe import load_model

    with pytest.raises(UserError, match="device 'cuda': no CUDA device on this machine") as caught:
        load_model(MODEL_DIR, device="cuda")
    assert "\n" not in str(caught.value) and "device='cpu'" in str(caught.value)
