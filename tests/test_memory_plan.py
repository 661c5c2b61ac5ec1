"""The memory planner: tiers and chunk size from budgets, refusal of impossible budgets with what is
short and by how much, and plans that drive the runner to the same logits. An offload dir the
disk tier cannot write to is refused when planning; under torchrun a rank plans for the largest
share it holds (shards aligned to Llama 4's attention chunk are uneven) and what it keeps on the device."""

import pytest
import torch

from ctxprobe.errors import UserError
from ctxprobe.runner import prefill
from ctxprobe.runner.memory import ModelShape, plan_for_checkpoint, plan_run
from ctxprobe.runner.presets import build_preset, preset_config
from ctxprobe.units import GiB, fmt_bytes

TiB = 1 << 40
from tiny_llama import write_checkpoint

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
    plan = plan_run(SCOUT_4L, 10 << 20, device="cuda", gpu_budget=78 * GiB, host_budget=120 * GiB)
    assert plan.weights == "resident" and plan.hidden_tier == "host"
    assert plan.kv_tiers == ["device"] * 4 and plan.gpu_bytes <= 78 << 30
    assert "10,485,760 tokens" in plan.describe()


def test_short_gpu_moves_kv_to_host_then_refuses():
    plan = plan_run(SCOUT_4L, 10 << 20, device="cuda", gpu_budget=40 * GiB, host_budget=1 * TiB)
    assert plan.kv_tiers[3] == "host" and plan.gpu_bytes <= 40 << 30
    with pytest.raises(UserError, match=r"GPU memory: .* short by \d"):
        plan_run(SCOUT_4L, 1 << 20, device="cuda", gpu_budget=10 * GiB, host_budget=1 * TiB)


def test_big_model_streams_weights():
    plan = plan_run(SCOUT_48L, 1 << 20, device="cuda", gpu_budget=78 * GiB, host_budget=1 * TiB)
    assert plan.weights == "host" and plan.gpu_bytes <= 78 << 30


def test_short_host_needs_offload_dir_and_names_the_shortfall(tmp_path):
    with pytest.raises(UserError) as err:
        plan_run(SCOUT_4L, 2 << 20, device="cuda", gpu_budget=78 * GiB, host_budget=16 * GiB)
    msg = str(err.value)   # the hidden states of 2M tokens x 5120 x bf16 are 20 GiB
    assert msg.startswith("host memory") and "short by 4.0 GiB" in msg and "--offload-dir" in msg
    plan = plan_run(SCOUT_4L, 2 << 20, device="cuda", gpu_budget=78 * GiB, host_budget=16 * GiB,
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
    plan = plan_run(shape, len(ids), device="cpu", host_budget=budget,   # a preset has no files: no disk weights
                    offload_dir=str(tmp_path), kv_block_tokens=64, weights="resident")
    assert plan.hidden_tier == "disk" and set(plan.kv_tiers) == {"disk"}, plan.describe()
    got = prefill(m, ids, settings=plan.settings(), all_logits=True).logits
    assert (got - m.logits(ids)).abs().max().item() <= 1e-4
    assert fmt_bytes(plan.disk_bytes) in plan.describe()


def test_generation_keeps_every_layer_and_spills_the_rest_to_host():
    plan = plan_run(SCOUT_48L, 2 << 20, device="cuda", gpu_budget=78 * GiB, host_budget=1 * TiB, keep_kv=True,
                    extra_tokens=64)
    assert plan.keep_kv and plan.weights == "host"
    assert "device" in plan.kv_tiers and "host" in plan.kv_tiers and plan.gpu_bytes <= 78 << 30
    one = plan_run(SCOUT_48L, 2 << 20, device="cuda", gpu_budget=78 * GiB, host_budget=1 * TiB)
    assert plan.host_bytes > one.host_bytes   # the kept KV lives on the host


def test_auto_settings_counts_torchs_cached_gpu_memory_as_usable(monkeypatch):
    """Free memory (cudaMemGetInfo) excludes blocks torch's caching allocator holds, cached ones from
    earlier runs included; the budget is free + reserved, not free + allocated."""
    from ctxprobe.runner import memory as planner

    model = build_preset("tiny")
    seen = {}
    monkeypatch.setattr(type(model), "device", property(lambda self: torch.device("cuda:0")))
    monkeypatch.setattr(planner, "default_budgets", lambda device: (10 << 30, 100 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 30 << 30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 20 << 30)
    monkeypatch.setattr(planner, "plan_run", lambda shape, length, **kw: seen.update(kw) or plan_run(
        shape, length, **{**kw, "device": "cpu", "gpu_budget": None}))
    planner.auto_settings(model, 100)
    assert seen["device"] == "cuda:0" and seen["gpu_budget"] == 40 << 30


# ---- the disk tier's offload directory is checked when planning
@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    """A tiny checkpoint with a tokenizer and chat template, written by transformers."""
    pytest.importorskip("transformers")
    return str(write_checkpoint(tmp_path_factory.mktemp("tiny-llama")))


def _short_host_plan(checkpoint, offload_dir, length=4096):
    """A plan on CPU whose host budget is one byte short of keeping everything in memory."""
    full = plan_for_checkpoint(checkpoint, length, device="cpu")
    return plan_for_checkpoint(checkpoint, length, device="cpu", host_budget=full.host_bytes - 1,
                               offload_dir=offload_dir)


def test_an_offload_dir_that_cannot_be_written_is_refused_when_planning(tokenized, tmp_path, monkeypatch):
    assert _short_host_plan(tokenized, str(tmp_path / "ok")).disk_bytes > 0     # the case needs disk
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(UserError, match="--offload-dir .*a-file/sub: cannot write there.*writable directory"):
        _short_host_plan(tokenized, str(a_file / "sub"))

    import ctxprobe.runner.memory as planner

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(planner.tempfile, "TemporaryFile", read_only)
    with pytest.raises(UserError, match="cannot write there \\(Read-only file system\\)"):
        _short_host_plan(tokenized, str(tmp_path / "ro"))


# ---- under torchrun: a rank plans for the largest share it holds, as the sharded runner keeps it
def test_ranks_plan_for_the_largest_share_they_hold(tmp_path):
    """Llama 4's local layers align shards to their attention chunk: at these lengths some rank
    holds far more than length / ranks tokens (and their K/V), and must be planned for that."""
    from ctxprobe.attention.shard import shard_len
    from ctxprobe.backends.options import MemoryBudgets
    from ctxprobe.runner.memory import RunPlanner

    pytest.importorskip("transformers")
    from tiny_models import save_tiny

    path, _ = save_tiny(tmp_path / "llama4", "llama4")     # attention chunk of 64 tokens
    for ranks, length in ((8, 1093), (3, 500), (2, 70)):
        planner = RunPlanner(str(path), device="cpu", dtype=torch.float32, budgets=MemoryBudgets(), ranks=ranks)
        align = 64 if length >= 2 * ranks * 64 else 1
        largest = max(shard_len(length, r, ranks, align=align) for r in range(ranks))
        assert planner.plan_sweep(length).length == largest
        assert planner.plan(length).length == largest
    assert largest == -(-70 // 2)   # unaligned (too short for whole chunks): an even split


def test_a_ranks_plan_counts_the_share_the_sharded_runner_holds_on_the_device():
    """The ring strategy (runner/context/ring.py) keeps a rank's whole share of hidden states (in
    and out), queries and attention output (with the ring's fp32 accumulators) on the device
    through each layer, and the ring
    holds a peer's K/V share while it receives the next. Scout at 10M tokens on 8 ranks: a lone
    prefill of the share's 1.25M tokens fits 78 GiB, but the rank's pass needs ~85 GiB more."""
    shape = ModelShape.from_config(preset_config("scout-48l"), 2)
    budgets = dict(device="cuda", gpu_budget=78 * GiB, host_budget=1500 * GiB)
    share = (10 << 20) // 8
    assert plan_run(shape, share, **budgets).gpu_bytes < 78 * GiB
    with pytest.raises(UserError, match="^GPU memory"):
        plan_run(shape, share, sharded=True, **budgets)
    T, D, Hq, Dh = 128 << 10, shape.dim, shape.n_heads, shape.head_dim
    x_in_out, q_and_out, ring_acc = 2 * T * D * 2, 2 * T * Hq * Dh * 2, T * Hq * (Dh + 1) * 4
    peer_kv = 2 * T * shape.kv_bytes_per_token     # the share held and the one arriving
    plan = plan_run(shape, T, sharded=True, **budgets)
    assert plan.shard_bytes == x_in_out + q_and_out + ring_acc + peer_kv
    streamed_layers = 2 * max(lay.weight_bytes for lay in shape.layers)     # weights in the host tier
    assert plan.weights == "host" and plan.gpu_bytes >= plan.shard_bytes + streamed_layers
    assert plan.hidden_tier == "device" and "rank's share on the device" in plan.describe()


def test_run_planner_plans_sharded_only_under_torchrun(tmp_path):
    from ctxprobe.backends.options import MemoryBudgets
    from ctxprobe.runner.memory import RunPlanner

    pytest.importorskip("transformers")
    from tiny_models import save_tiny

    path, _ = save_tiny(tmp_path / "llama", "llama")
    alone = RunPlanner(str(path), device="cpu", dtype=torch.float32, budgets=MemoryBudgets()).plan_sweep(500)
    ranked = RunPlanner(str(path), device="cpu", dtype=torch.float32, budgets=MemoryBudgets(), ranks=2)
    assert alone.shard_bytes == 0 and alone.hidden_tier == "host"
    assert ranked.plan_sweep(500).shard_bytes > 0 and ranked.plan(300).hidden_tier == "device"


def test_budgets_are_read_once_into_bytes_naming_the_flag_at_fault():
    from ctxprobe.backends.options import MemoryBudgets

    assert MemoryBudgets("78GiB", "1.5T", "/tmp").parsed() == (78 * GiB, int(1.5 * TiB))
    assert MemoryBudgets().parsed() == (None, None)
    with pytest.raises(UserError, match="^--host-memory: cannot read 'lots'"):
        MemoryBudgets(host_memory="lots").parsed()
