"""Weight tiers: blocks resident, in exact-size host arenas, or read from the checkpoint's files one
layer ahead (disk). The disk tier is the same math as resident (float32, <= 1e-6) through the plain
forward (ctxprobe.runner.logits; Model.logits alone refuses streamed blocks),
the streamed prefill, score and generate; blocks hold no storage between layers; the planner picks
host then disk as host memory shrinks and counts the host tier at its exact bytes. A shard replaced
or truncated since loading is refused, naming the file, never read as other weights."""

import json
import os
import shutil

import pytest
import torch

from ctxprobe.cli import main
from ctxprobe.errors import UserError
from ctxprobe.runner import generate, logits, score
from ctxprobe.runner.memory import ModelShape, plan_for_checkpoint, plan_run
from ctxprobe.runner import Settings, prefill
from ctxprobe.runner.presets import build_preset, preset_config
from ctxprobe.runner.weights import HostArenas, LayerWeights, layer_bytes

pytest.importorskip("transformers")

from ctxprobe.runner import load_model  # noqa: E402
from tiny_models import save_tiny  # noqa: E402

FAMILIES = ["llama", "mixtral", "qwen3_moe", "llama4", "llama4_multimodal"]
SETTINGS = Settings(chunk_tokens=37, kv_block_tokens=16)   # chunks that do not divide the prompt


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> checkpoint dir in small shards (experts of one layer spread over several files)."""
    made = {}

    def get(family):
        if family not in made:
            made[family], _ = save_tiny(tmp_path_factory.mktemp(family), family, max_shard_size="20KB")
        return made[family]

    return get


def ids(n, seed=0):
    return torch.randint(0, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def assert_blocks_empty(model):
    devices = {p.device.type for p in model.blocks.parameters()}
    assert devices == {"meta"}, devices


@pytest.mark.parametrize("family", FAMILIES)
def test_disk_tier_is_the_same_math_as_resident(checkpoints, family):
    path = checkpoints(family)
    resident = load_model(path, device="cpu", dtype="float32")
    disk = load_model(path, device="cpu", dtype="float32", weights="disk")
    assert disk.weight_tier == "disk"
    assert_blocks_empty(disk)
    prompt = ids(150)
    assert (logits(disk, prompt) - resident.logits(prompt)).abs().max().item() <= 1e-6
    assert_blocks_empty(disk)
    if family == "llama4_multimodal":   # llama4's text model under other keys: the key mapping is what differs
        return
    got = prefill(disk, prompt, settings=SETTINGS, all_logits=True).logits
    want = prefill(resident, prompt, settings=SETTINGS, all_logits=True).logits
    assert (got - want).abs().max().item() <= 1e-6
    branches = [(prompt[:5], prompt[5:9]), (prompt[9:12], prompt[12:20])]
    for a, b in zip(score(resident, prompt[:100], branches, settings=SETTINGS),
                    score(disk, prompt[:100], branches, settings=SETTINGS)):
        assert a.greedy == b.greedy and a.exact == b.exact and a.first_rank == b.first_rank
        assert abs(a.logprob - b.logprob) <= 1e-5
    assert (generate(disk, prompt, 5, settings=SETTINGS) == generate(resident, prompt, 5, settings=SETTINGS))
    assert_blocks_empty(disk)


def test_disk_tier_with_another_dtype(checkpoints):
    """--dtype bfloat16 over a float32 checkpoint: converted while read, as the resident load converts."""
    path = checkpoints("mixtral")
    resident = load_model(path, device="cpu", dtype="bfloat16")
    disk = load_model(path, device="cpu", dtype="bfloat16", weights="disk")
    prompt = ids(80, seed=1)
    assert torch.equal(logits(disk, prompt), resident.logits(prompt))


def test_only_the_entered_layer_holds_weights_and_the_next_is_read_ahead(checkpoints):
    model = load_model(checkpoints("llama4"), device="cpu", dtype="float32", weights="disk")
    source = model.blocks.weight_source
    weights = LayerWeights(model.blocks, "cpu")
    try:
        for layer, block in enumerate(model.blocks):
            weights.enter(layer)
            for i, other in enumerate(model.blocks):
                kinds = {p.device.type for p in other.parameters()}
                assert kinds == ({"cpu"} if i == layer else {"meta"}), (layer, i, kinds)
            # block l+1 is on its way (a worker thread reads it while block l computes)
            assert set(weights._pending) == ({layer + 1} if layer + 1 < len(model.blocks) else set())
            weights.leave(layer)
            assert {p.device.type for p in block.parameters()} == {"meta"}
    finally:
        weights.restore()
    assert weights.bytes_read == sum(sum(r.nbytes for r in reads) for reads in source.reads)
    assert source.staging_bytes == 2 * max(layer_bytes(b, torch.float32) for b in model.blocks)


def test_a_failed_pass_leaves_the_blocks_empty_and_the_next_pass_works(checkpoints, monkeypatch):
    path = checkpoints("qwen3_moe")
    disk = load_model(path, device="cpu", dtype="float32", weights="disk")
    block = disk.blocks[1]
    monkeypatch.setattr(block, "finish", lambda *a: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(RuntimeError, match="out of memory"):
        logits(disk, ids(40))
    assert_blocks_empty(disk)
    monkeypatch.undo()
    resident = load_model(path, device="cpu", dtype="float32")
    assert (logits(disk, ids(40)) - resident.logits(ids(40))).abs().max().item() <= 1e-6


def test_the_models_own_forward_refuses_streamed_blocks_and_names_the_runners(checkpoints):
    """models/ knows no weight tier: Model.logits runs resident blocks; streamed ones go through
    ctxprobe.runner.logits, which brings each layer in."""
    path = checkpoints("llama")
    disk = load_model(path, device="cpu", dtype="float32", weights="disk")
    with pytest.raises(UserError, match=r"ctxprobe\.runner\.logits\(model, ids\)") as caught:
        disk.logits(ids(20))
    assert "\n" not in str(caught.value)
    assert_blocks_empty(disk)
    resident = load_model(path, device="cpu", dtype="float32")
    assert torch.equal(logits(resident, ids(20)), resident.logits(ids(20)))


@pytest.mark.parametrize("break_it", ["truncated", "missing key"])
def test_a_broken_checkpoint_fails_before_any_weight_is_read(checkpoints, tmp_path, monkeypatch, break_it):
    import shutil

    from safetensors.torch import load_file, save_file

    from ctxprobe.models import loader
    from ctxprobe.runner import weights

    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoints("llama"), ckpt)
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    if break_it == "truncated":
        f = ckpt / index["weight_map"]["model.layers.1.mlp.down_proj.weight"]
        f.write_bytes(f.read_bytes()[:-8])
    else:
        f = ckpt / index["weight_map"]["model.layers.0.self_attn.q_proj.weight"]
        tensors = load_file(str(f))
        del tensors["model.layers.0.self_attn.q_proj.weight"]
        save_file(tensors, str(f), metadata={"format": "pt"})

    def no_reads(*a, **k):
        raise AssertionError("a weight was read before the checkpoint was checked")

    monkeypatch.setattr(loader, "safe_open", no_reads)
    monkeypatch.setattr(weights, "_pread", no_reads)
    with pytest.raises(UserError) as err:
        load_model(ckpt, device="cpu", weights="disk")
    msg = str(err.value)
    assert "\n" not in msg and ("truncated" in msg if break_it == "truncated" else "missing key" in msg)


def test_a_byte_range_that_disagrees_with_shape_and_dtype_is_refused(tmp_path):
    """The disk tier reads shape x dtype bytes from a tensor's offset, so the header check holds
    every tensor's byte range to its shape and dtype (safetensors' own loader checks it on read)."""
    import struct

    from ctxprobe.models.loader import _header_entries

    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}).encode()
    f = tmp_path / "model.safetensors"
    f.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(UserError, match="spans 4 bytes, its shape and dtype need 8"):
        _header_entries(f)


def test_host_arenas_are_page_locked_at_their_exact_size(checkpoints, monkeypatch):
    """One arena per layer, registered with cudaHostRegister at exactly the layer's bytes (no
    power-of-two rounding); the parameters are views into it and the logits do not change."""
    calls = []

    class FakeCudart:
        def cudaHostRegister(self, ptr, nbytes, flags):
            calls.append((ptr, nbytes))
            return 0

        def cudaHostUnregister(self, ptr):
            calls.remove(next(c for c in calls if c[0] == ptr))
            return 0

    model = load_model(checkpoints("llama4"), device="cpu", dtype="float32")
    before = model.logits(ids(60))
    monkeypatch.setattr(torch.cuda, "cudart", lambda: FakeCudart())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    arenas = HostArenas(model.blocks)
    exact = [layer_bytes(b) for b in model.blocks]
    assert [(a.data_ptr(), a.numel()) for a in arenas.arenas] == calls and [n for _, n in calls] == exact
    for block, arena in zip(model.blocks, arenas.arenas):
        lo, hi = arena.data_ptr(), arena.data_ptr() + arena.numel()
        assert all(lo <= p.data_ptr() < hi for p in block.parameters())
    assert torch.equal(model.logits(ids(60)), before)
    arenas.close()
    assert calls == []


def test_weight_tier_names():
    from ctxprobe.runner.weights import weight_tier

    cuda, cpu = torch.device("cuda:0"), torch.device("cpu")
    assert weight_tier(None, cuda) == "resident" and weight_tier("host", cuda) == "host"
    assert weight_tier("host", cpu) == "resident" and weight_tier("disk", cpu) == "disk"
    with pytest.raises(UserError, match="resident, host, disk"):
        weight_tier("ssd", cpu)


# ---- the planner ------------------------------------------------------------------------------
GiB, TiB = 1 << 30, 1 << 40
SCOUT_48L = ModelShape.from_config(preset_config("scout-48l"), 2)


def test_planner_moves_weights_host_then_disk_as_host_memory_shrinks():
    """Scout (48 layers, bf16, ~203 GiB of blocks) on one 78 GiB GPU at 1M tokens."""
    blocks = sum(lay.weight_bytes for lay in SCOUT_48L.layers)
    roomy = plan_run(SCOUT_48L, 1 << 20, device="cuda", gpu_budget=78 * GiB, host_budget=1 * TiB)
    assert roomy.weights == "host" and roomy.weights_host_bytes == blocks
    assert roomy.host_bytes == blocks + 1_048_576 * 5120 * 2      # arenas + hidden states, nothing rounded
    # 150 GiB of host memory cannot hold the blocks: read them from the checkpoint (no offload dir needed)
    short = plan_run(SCOUT_48L, 1 << 20, device="cuda", gpu_budget=78 * GiB, host_budget=150 * GiB)
    assert short.weights == "disk" and short.hidden_tier == "host" and short.disk_bytes == 0
    assert short.weights_host_bytes == 2 * max(lay.weight_bytes for lay in SCOUT_48L.layers)
    assert "disk tier: blocks read from the checkpoint's files" in short.describe()
    assert "host tier: blocks in page-locked host memory" in roomy.describe()
    # Even 32 GiB works: weights from disk, two staging layers and the hidden states in host memory.
    assert plan_run(SCOUT_48L, 1 << 20, device="cuda", gpu_budget=78 * GiB, host_budget=32 * GiB).weights == "disk"
    with pytest.raises(UserError, match="short by"):
        plan_run(SCOUT_48L, 1 << 20, device="cuda", gpu_budget=78 * GiB, host_budget=12 * GiB)
    # A tier fixed by the caller (a model already loaded) is kept, and its shortfall named.
    with pytest.raises(UserError, match="host memory"):
        plan_run(SCOUT_48L, 1 << 20, device="cuda", gpu_budget=78 * GiB, host_budget=150 * GiB, weights="host")


def test_planner_host_estimate_is_the_exact_arena_size(checkpoints, monkeypatch):
    path = checkpoints("llama4")
    plan = plan_for_checkpoint(path, 200, device="cuda", gpu_budget=1 * GiB, weights="host")
    model = load_model(path, device="cpu", dtype="float32")
    assert plan.weights_host_bytes == HostArenas(model.blocks).nbytes
    assert plan.weights_host_bytes == sum(plan.shape.layers[i].weight_bytes for i in range(4))


def test_planner_on_cpu_goes_from_resident_to_disk(checkpoints):
    path = checkpoints("llama4")
    roomy = plan_for_checkpoint(path, 200, device="cpu", host_budget=1 * GiB)
    assert roomy.weights == "resident"
    tight = roomy.host_bytes - 1     # one byte short of holding every weight
    plan = plan_for_checkpoint(path, 200, device="cpu", host_budget=tight)
    assert plan.weights == "disk" and plan.host_bytes <= tight and plan.disk_bytes == 0


# ---- presets and the CLI ----------------------------------------------------------------------
def test_presets_have_no_disk_tier(runner):
    with pytest.raises(UserError, match="no checkpoint files"):
        build_preset("tiny", weights="disk")
    res = runner.invoke(main, ["bench", "--preset", "tiny", "--length", "64", "--device", "cpu", "--weights", "disk"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "has none" in res.output
    assert build_preset("tiny", weights="host").weight_tier == "resident"   # on CPU the host is the device


def test_bench_and_inspect_with_disk_weights(runner, checkpoints):
    path = str(checkpoints("llama"))
    res = runner.invoke(main, ["bench", path, "--length", "100", "--device", "cpu", "--weights", "disk", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.splitlines()[-1])["length"] == 100
    path = str(checkpoints("llama4"))   # 4 layers: reading 2 at a time from disk saves memory
    tight = plan_for_checkpoint(path, 200, device="cpu", host_budget=1 * GiB).host_bytes - 1
    res = runner.invoke(main, ["inspect", path, "--length", "200", "--host-memory", str(tight)])
    assert res.exit_code == 0, res.output
    assert "weights:" in res.output and "disk tier" in res.output


# ---- a checkpoint changed on disk after loading: refused, naming the file, never read as other weights
PROMPT = list(range(1, 30))


@pytest.fixture(scope="module")
def two_llamas(tmp_path_factory):
    """Two checkpoints of one layout (seeds 0 and 1), in several shards."""
    root = tmp_path_factory.mktemp("llama")
    first, _ = save_tiny(root / "a", "llama", seed=0, max_shard_size="40KB")
    second, _ = save_tiny(root / "b", "llama", seed=1, max_shard_size="40KB")
    return str(first), str(second)


def _copy(src, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def test_disk_weights_refuse_a_shard_replaced_since_loading(two_llamas, tmp_path):
    first, second = two_llamas
    path = _copy(first, tmp_path)
    model = load_model(path, device="cpu", dtype="float32", weights="disk")
    want = load_model(first, device="cpu", dtype="float32").logits(PROMPT)
    name = os.path.basename(model.blocks.weight_source.reads[0][0].file)   # holds a block's weights
    staged = tmp_path / "staged"
    shutil.copy(os.path.join(second, name), staged)
    os.replace(staged, path / name)          # another model's shard, same layout, same size
    with pytest.raises(UserError, match=f"{name}.*changed since the model was loaded"):
        logits(model, PROMPT)
    # a model loaded now reads the new bytes; the old one is never silently the new one
    again = load_model(path, device="cpu", dtype="float32", weights="disk")
    assert not torch.allclose(logits(again, PROMPT), want)


def test_disk_weights_refuse_a_shard_truncated_since_loading(two_llamas, tmp_path):
    path = _copy(two_llamas[0], tmp_path)
    model = load_model(path, device="cpu", dtype="float32", weights="disk")
    first = logits(model, PROMPT)            # files open, one pass done
    name = os.path.basename(model.blocks.weight_source.reads[-1][-1].file)
    os.truncate(path / name, os.path.getsize(path / name) // 2)
    with pytest.raises(UserError, match=f"{name}.*changed since the model was loaded"):
        logits(model, PROMPT)
    assert first.isfinite().all()
