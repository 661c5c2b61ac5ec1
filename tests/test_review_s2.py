"""Review of the weight tiers / memory budgets change: inputs that broke it, each held fixed here.

- the disk weight tier reads shards by the byte ranges indexed at load time: a shard replaced or
  truncated since then must be refused, naming the file, never read as other weights;
- an --offload-dir the disk tier cannot write to is refused when the plan is made, before any cell;
- --device names a device ctxprobe cannot run on (mps, meta): one line before anything loads;
- under torchrun a rank plans for the largest share it can hold (shards aligned to Llama 4's
  attention chunk are uneven), not for length / ranks.
"""

import os
import shutil

import pytest
import torch

from ctxprobe.cli import main
from ctxprobe.errors import UserError
from ctxprobe.runner.planner import plan_for_checkpoint
from tiny_llama import write_checkpoint

pytest.importorskip("transformers")

from ctxprobe.models import load_model  # noqa: E402
from ctxprobe.models.tiny import save_tiny  # noqa: E402

PROMPT = list(range(1, 30))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """Two checkpoints of one layout (seeds 0 and 1), in several shards."""
    root = tmp_path_factory.mktemp("llama")
    first, _ = save_tiny(root / "a", "llama", seed=0, max_shard_size="40KB")
    second, _ = save_tiny(root / "b", "llama", seed=1, max_shard_size="40KB")
    return str(first), str(second)


def _copy(src, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def test_disk_weights_refuse_a_shard_replaced_since_loading(llama, tmp_path):
    first, second = llama
    path = _copy(first, tmp_path)
    model = load_model(path, device="cpu", dtype="float32", weights="disk")
    want = load_model(first, device="cpu", dtype="float32").logits(PROMPT)
    name = os.path.basename(model.blocks.weight_source.reads[0][0].file)   # holds a block's weights
    staged = tmp_path / "staged"
    shutil.copy(os.path.join(second, name), staged)
    os.replace(staged, path / name)          # another model's shard, same layout, same size
    with pytest.raises(UserError, match=f"{name}.*changed since the model was loaded"):
        model.logits(PROMPT)
    # a model loaded now reads the new bytes; the old one is never silently the new one
    again = load_model(path, device="cpu", dtype="float32", weights="disk")
    assert not torch.allclose(again.logits(PROMPT), want)


def test_disk_weights_refuse_a_shard_truncated_since_loading(llama, tmp_path):
    path = _copy(llama[0], tmp_path)
    model = load_model(path, device="cpu", dtype="float32", weights="disk")
    first = model.logits(PROMPT)             # files open, one pass done
    name = os.path.basename(model.blocks.weight_source.reads[-1][-1].file)
    os.truncate(path / name, os.path.getsize(path / name) // 2)
    with pytest.raises(UserError, match=f"{name}.*changed since the model was loaded"):
        model.logits(PROMPT)
    assert first.isfinite().all()


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    """A tiny checkpoint with a tokenizer and chat template (for `ctxprobe run`)."""
    return str(write_checkpoint(tmp_path_factory.mktemp("tiny-llama")))


def _short_host_plan(checkpoint, offload_dir, length=4096):
    """A plan on CPU whose host budget is one byte short of keeping everything in memory."""
    full = plan_for_checkpoint(checkpoint, length, device="cpu")
    return plan_for_checkpoint(checkpoint, length, device="cpu", host_memory=full.host_bytes - 1,
                               offload_dir=offload_dir)


def test_an_offload_dir_that_cannot_be_written_is_refused_when_planning(tokenized, tmp_path, monkeypatch):
    assert _short_host_plan(tokenized, str(tmp_path / "ok")).disk_bytes > 0     # the case needs disk
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(UserError, match="--offload-dir .*a-file/sub: cannot write there.*writable directory"):
        _short_host_plan(tokenized, str(a_file / "sub"))

    import ctxprobe.runner.planner as planner

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(planner.tempfile, "TemporaryFile", read_only)
    with pytest.raises(UserError, match="cannot write there \\(Read-only file system\\)"):
        _short_host_plan(tokenized, str(tmp_path / "ro"))


def test_run_with_an_unwritable_offload_dir_is_one_line_and_stores_nothing(tokenized, runner, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    db = tmp_path / "r.db"
    budget = str(plan_for_checkpoint(tokenized, 4096, device="cpu").host_bytes - 1)  # the cell is longer
    result = runner.invoke(main, ["run", "--model", tokenized, "--probe", "niah", "--lengths", "4k",
                                  "--depths", "0", "--device", "cpu", "--quiet", "--db", str(db),
                                  "--host-memory", budget, "--offload-dir", str(a_file / "sub")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --offload-dir"), result.output
    assert not db.exists() or runner.invoke(main, ["runs", "--db", str(db)]).output.startswith("no runs")


@pytest.mark.parametrize("device", ["mps", "meta"])
def test_a_device_ctxprobe_cannot_run_on_is_one_line(tokenized, runner, tmp_path, device):
    db = tmp_path / "r.db"
    result = runner.invoke(main, ["run", "--model", tokenized, "--probe", "niah", "--lengths", "256",
                                  "--depths", "0", "--quiet", "--db", str(db), "--device", device])
    assert result.exit_code == 2, result.output
    assert not db.exists() or runner.invoke(main, ["runs", "--db", str(db)]).output.startswith("no runs")
    assert result.output.strip().splitlines() == [
        f"error: --device {device}: the runner supports cuda and cpu; use --device cuda, cuda:N or cpu"]


def test_ranks_plan_for_the_largest_share_they_hold(tmp_path):
    """Llama 4's local layers align shards to their attention chunk: at these lengths some rank
    holds far more than length / ranks tokens (and their K/V), and must be planned for that."""
    from attention.shard import shard_len
    from ctxprobe.backends.memory import MemoryBudgets, RunPlanner

    path, _ = save_tiny(tmp_path / "llama4", "llama4")     # attention chunk of 64 tokens
    for ranks, length in ((8, 1093), (3, 500), (2, 70)):
        planner = RunPlanner(str(path), device="cpu", dtype=torch.float32, budgets=MemoryBudgets(), ranks=ranks)
        align = 64 if length >= 2 * ranks * 64 else 1
        largest = max(shard_len(length, r, ranks, align=align) for r in range(ranks))
        assert planner.plan_sweep(length).length == largest
        assert planner.plan(length).length == largest
    assert largest == -(-70 // 2)   # unaligned (too short for whole chunks): an even split


def test_bench_plans_every_length_with_the_weight_tier_it_loads(runner, tmp_path):
    """One model serves every --length: a length whose own plan keeps the weights resident runs
    (and is described, and sized) with the tier the longest length needed."""
    path, _ = save_tiny(tmp_path / "llama4", "llama4")
    budget = None
    for b in range(plan_for_checkpoint(path, 4096, device="cpu").host_bytes, 0, -8192):
        if plan_for_checkpoint(path, 4096, device="cpu", host_memory=b).weights == "disk":
            budget = b
            break
    assert plan_for_checkpoint(path, 256, device="cpu", host_memory=budget).weights == "resident"
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


def test_a_ranks_plan_counts_the_share_the_sharded_runner_holds_on_the_device():
    """sharded.py keeps a rank's whole share of hidden states (in and out), queries and attention
    output (with the ring's fp32 accumulators) on the device through each layer, and the ring
    holds a peer's K/V share while it receives the next. Scout at 10M tokens on 8 ranks: a lone
    prefill of the share's 1.25M tokens fits 78 GiB, but the rank's pass needs ~85 GiB more."""
    from ctxprobe.runner.planner import ModelShape, plan_run
    from ctxprobe.units import GiB
    from ctxprobe.runner.presets import preset_config

    shape = ModelShape.from_config(preset_config("scout-48l"), 2)
    budgets = dict(device="cuda", gpu_memory="78GiB", host_memory="1500GiB")
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
    from ctxprobe.backends.memory import MemoryBudgets, RunPlanner

    path, _ = save_tiny(tmp_path / "llama", "llama")
    alone = RunPlanner(str(path), device="cpu", dtype=torch.float32, budgets=MemoryBudgets()).plan_sweep(500)
    ranked = RunPlanner(str(path), device="cpu", dtype=torch.float32, budgets=MemoryBudgets(), ranks=2)
    assert alone.shard_bytes == 0 and alone.hidden_tier == "host"
    assert ranked.plan_sweep(500).shard_bytes > 0 and ranked.plan(300).hidden_tier == "device"
