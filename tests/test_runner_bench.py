"""`ctxprobe bench`, `ctxprobe inspect --length` plan output and bench/runner.py, at CPU sizes."""

import json
import runpy
import sys
from pathlib import Path

import pytest

from ctxprobe.cli import main
from ctxprobe.runner.memory import ModelShape, plan_for_checkpoint
from ctxprobe.runner.presets import preset_config

ROOT = Path(__file__).resolve().parents[1]


def test_bench_cli_reports_figures(runner):
    res = runner.invoke(main, ["bench", "--preset", "tiny", "--length", "200,300", "--device", "cpu",
                               "--chunk", "64", "--json", "--peak-tflops", "1"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    assert [r["length"] for r in rows] == [200, 300] and all(r["chunk_tokens"] == 64 for r in rows)
    shape = ModelShape.from_config(preset_config("tiny"), 4)
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["peak_host_bytes"] > 0 and r["peak_gpu_bytes"] is None
        assert r["tflops"] == pytest.approx(shape.flops(r["length"]) / r["seconds"] / 1e12, rel=1e-6)
        assert r["mfu"] == pytest.approx(r["tflops"] / 1.0)


def test_bench_cli_text_and_help(runner):
    res = runner.invoke(main, ["bench", "--preset", "tiny", "--length", "256", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "plan for 256 tokens on cpu" in res.output and "tok/s" in res.output and "MFU" in res.output
    assert "Example:" in runner.invoke(main, ["bench", "--help"]).output
    bad = runner.invoke(main, ["bench", "--preset", "nope", "--device", "cpu"])
    assert bad.exit_code == 2 and "unknown preset 'nope'" in bad.output


@pytest.mark.parametrize("args,message", [
    (["--device", "nonsense"], "--device 'nonsense' is not a device"),
    (["--device", "meta"], "supports cuda and cpu"),
    (["--peak-tflops", "0"], "--peak-tflops"),
])
def test_bench_cli_bad_options_are_one_line_errors(runner, args, message):
    res = runner.invoke(main, ["bench", "--preset", "tiny", "--length", "64", *args])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


def test_bench_cli_cuda_without_a_gpu_is_a_one_line_error(runner, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = runner.invoke(main, ["bench", "--preset", "tiny", "--length", "64", "--device", "cuda"])
    assert res.exit_code == 2 and "no CUDA device" in res.output


def test_bench_cli_checkpoint_with_streamed_weights(runner, tmp_path):
    pytest.importorskip("transformers")
    from tiny_models import save_tiny

    path, _ = save_tiny(tmp_path / "llama", "llama")
    res = runner.invoke(main, ["bench", str(path), "--length", "100", "--device", "cpu", "--weights", "host",
                               "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.splitlines()[-1])["length"] == 100


def test_inspect_shows_the_plan(runner, tmp_path):
    pytest.importorskip("transformers")
    from tiny_models import save_tiny

    path, _ = save_tiny(tmp_path / "llama4", "llama4", max_shard_size="2MB")
    res = runner.invoke(main, ["inspect", str(path), "--length", "1M", "--gpu-memory", "1GiB",
                               "--host-memory", "2GiB"])
    assert res.exit_code == 0, res.output
    assert "plan for 1,048,576 tokens on cuda" in res.output and "peak GPU memory" in res.output
    short = runner.invoke(main, ["inspect", str(path), "--length", "1M", "--gpu-memory", "1MiB"])
    assert short.exit_code == 2 and "GPU memory" in short.output and "short by" in short.output


def test_bench_script_runs_on_cpu(capsys, monkeypatch):
    # No time budget (inf): the script skips a step predicted not to fit the time left, and on a
    # loaded machine any finite budget would decide the outcome.
    monkeypatch.setattr(sys, "argv", ["bench/runner.py", "--lengths", "128,256", "--longest", "512",
                                      "--budget-s", "inf"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / "bench" / "runner.py"), run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    rows = [json.loads(line[5:]) for line in out.splitlines() if line.startswith("JSON ")]
    assert {r["length"] for r in rows} >= {128, 256}
    assert any(r["kv_tier_global"] == "host" for r in rows)


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    """A tiny checkpoint with a tokenizer and chat template, written by transformers."""
    pytest.importorskip("transformers")
    from tiny_llama import write_checkpoint

    return str(write_checkpoint(tmp_path_factory.mktemp("tiny-llama")))


def test_bench_plans_every_length_with_the_weight_tier_it_loads(runner, tmp_path):
    """One model serves every --length: a length whose own plan keeps the weights resident runs
    (and is described, and sized) with the tier the longest length needed."""
    pytest.importorskip("transformers")
    from tiny_models import save_tiny

    path, _ = save_tiny(tmp_path / "llama4", "llama4")
    budget = None
    for b in range(plan_for_checkpoint(path, 4096, device="cpu").host_bytes, 0, -8192):
        if plan_for_checkpoint(path, 4096, device="cpu", host_budget=b).weights == "disk":
            budget = b
            break
    assert plan_for_checkpoint(path, 256, device="cpu", host_budget=budget).weights == "resident"
    result = runner.invoke(main, ["bench", str(path), "--length", "256,4k", "--device", "cpu",
                                  "--host-memory", str(budget)])
    assert result.exit_code == 0, result.output
    tiers = [line for line in result.output.splitlines() if line.strip().startswith("weights:")]
    assert len(tiers) == 2 and all("disk tier" in line for line in tiers), tiers


@pytest.mark.parametrize("chunk", ["0", "lots"])
def test_a_bad_chunk_names_the_flag(runner, tokenized, chunk):
    result = runner.invoke(main, ["bench", tokenized, "--length", "256", "--device", "cpu", "--chunk", chunk])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith(f"error: --chunk: bad length '{chunk}'"), result.output
