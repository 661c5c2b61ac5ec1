"""The memory planner: tiers and chunk size from budgets, refusal of impossible budgets with what is
short and by how much, and plans that drive the runner to the same logits."""

import pytest
import torch

from ctxprobe.errors import UserError
from ctxprobe.runner import prefill
from ctxprobe.runner.planner import ModelShape, plan_run
from ctxprobe.runner.presets import build_preset, preset_config
from ctxprobe.units import fmt_bytes

SCOUT_4L = ModelShape.from_config(preset_config("scout-4l"), 2)
SCOUT_48L = ModelShape.from_config(preset_config("scout-48l"), 2)


def test_scout_shape_matches_published_figures():
    # 8 KV heads x 128 x (K+V) x bf16 = 4 KiB per token per layer; 1 of every 4 layers global.
    assert SCOUT_48L.kv_bytes_per_token == 4096
    assert [lay.kind for lay in SCOUT_4L.layers] == ["chunked"] * 3 + ["global"]
    assert sum(lay.kind == "global" for lay in SCOUT_48L.layers) == 12
    # ~17B active and ~109B total parameters (bf16 weights ~218 GB) for the full model.
    active = sum(lay.active_params for lay in SCOUT_48L.layers)
    assert 15e9 < active + 2 * 202048 * 5120 < 18e9
    assert 200e9 < SCOUT_48L.weight_bytes < 225e9


def test_one_h100_holds_scout_4l_at_10m_with_host_hidden_states():
    plan = plan_run(SCOUT_4L, "10M", device="cuda", gpu_memory="78GiB", host_memory="120GiB")
    assert plan.weights == "resident" and plan.hidden_tier == "host"
    assert plan.kv_tiers == ["device"] * 4 and plan.gpu_bytes <= 78 << 30
    assert "10,485,760 tokens" in plan.describe()


def test_short_gpu_moves_kv_to_host_then_refuses():
    plan = plan_run(SCOUT_4L, "10M", device="cuda", gpu_memory="40GiB", host_memory="1TiB")
    assert plan.kv_tiers[3] == "host" and plan.gpu_bytes <= 40 << 30
    with pytest.raises(UserError, match=r"GPU memory: .* short by \d"):
        plan_run(SCOUT_4L, "1M", device="cuda", gpu_memory="10GiB", host_memory="1TiB")


def test_big_model_streams_weights():
    plan = plan_run(SCOUT_48L, "1M", device="cuda", gpu_memory="78GiB", host_memory="1TiB")
    assert plan.weights == "host" and plan.gpu_bytes <= 78 << 30


def test_short_host_needs_offload_dir_and_names_the_shortfall(tmp_path):
    with pytest.raises(UserError) as err:
        plan_run(SCOUT_4L, "2M", device="cuda", gpu_memory="78GiB", host_memory="16GiB")
    msg = str(err.value)   # the hidden states of 2M tokens x 5120 x bf16 are 20 GiB
    assert msg.startswith("host memory") and "short by 4.0 GiB" in msg and "--offload-dir" in msg
    plan = plan_run(SCOUT_4L, "2M", device="cuda", gpu_memory="78GiB", host_memory="16GiB",
                    offload_dir=str(tmp_path))
    assert plan.hidden_tier == "disk" and plan.disk_bytes == 2 * (1 << 20) * 5120 * 2


def test_cli_refuses_before_any_work(runner):
    from ctxprobe.cli import main

    res = runner.invoke(main, ["bench", "--preset", "tiny", "--length", "64k", "--device", "cpu",
                               "--host-memory", "1MiB"])
    assert res.exit_code == 2
    assert "host memory" in res.output and "short by" in res.output and "tokens/s" not in res.output


def test_plan_settings_reproduce_logits(tmp_path):
    """A plan squeezed onto disk drives the runner to the same logits as the plain forward."""
    m = build_preset("tiny", dtype="float32")
    shape = ModelShape.from_config(m.config, 4)
    ids = torch.randint(0, m.config.vocab_size, (300,), generator=torch.Generator().manual_seed(0)).tolist()
    budget = shape.weight_bytes + shape.activation_bytes(512) + 1000
    plan = plan_run(shape, len(ids), device="cpu", host_memory=budget,   # a preset has no files: no disk weights
                    offload_dir=str(tmp_path), kv_block_tokens=64, weights="resident")
    assert plan.hidden_tier == "disk" and set(plan.kv_tiers) == {"disk"}, plan.describe()
    got = prefill(m, ids, settings=plan.settings(), all_logits=True).logits
    assert (got - m.logits(ids)).abs().max().item() <= 1e-4
    assert fmt_bytes(plan.disk_bytes) in plan.describe()


def test_generation_keeps_every_layer_and_spills_the_rest_to_host():
    plan = plan_run(SCOUT_48L, "2M", device="cuda", gpu_memory="78GiB", host_memory="1TiB", keep_kv=True,
                    extra_tokens=64)
    assert plan.keep_kv and plan.weights == "host"
    assert "device" in plan.kv_tiers and "host" in plan.kv_tiers and plan.gpu_bytes <= 78 << 30
    one = plan_run(SCOUT_48L, "2M", device="cuda", gpu_memory="78GiB", host_memory="1TiB")
    assert plan.host_bytes > one.host_bytes   # the kept KV lives on the host


def test_auto_settings_counts_torchs_cached_gpu_memory_as_usable(monkeypatch):
    """Free memory (cudaMemGetInfo) excludes blocks torch's caching allocator holds, cached ones from
    earlier runs included; the budget is free + reserved, not free + allocated."""
    import importlib

    from ctxprobe.runner import planner

    prefill_module = importlib.import_module("ctxprobe.runner.prefill")   # the module, not the function

    seen = {}
    monkeypatch.setattr(prefill_module, "model_device", lambda model: torch.device("cuda:0"))
    monkeypatch.setattr(planner, "default_budgets", lambda device: (10 << 30, 100 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 30 << 30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 20 << 30)
    monkeypatch.setattr(planner, "plan_run", lambda shape, length, **kw: seen.update(kw) or plan_run(
        shape, length, **{**kw, "device": "cpu", "gpu_memory": None}))
    planner.auto_settings(build_preset("tiny"), 100)
    assert seen["device"] == "cuda:0" and seen["gpu_memory"] == 40 << 30
