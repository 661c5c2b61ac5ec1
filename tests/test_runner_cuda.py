"""The runner's CUDA paths against the CPU, in one quick file (step 1 of bench/gpu_check.py).

What runs on the card: block weights resident, in page-locked host arenas (one DMA per layer on a
side stream) and read from disk into page-locked staging on a worker thread; K/V in the device,
host and disk tiers (streamed with attention.BlockStream); hidden states pinned in host memory or
on disk (side-stream prefetch and write-back); score and generate; the traffic counters; no
device memory left behind by a pass or by a model that is dropped; sharded_prefill under a
one-rank NCCL group. The oracle is always the CPU: `.logits()` of the float32 model on the CPU.

Every test body takes the device. The "cpu" cases run everywhere (gloo stands in for NCCL) and
prove the checks themselves; the "cuda" cases are skipped without a CUDA device.
"""

from __future__ import annotations

import datetime
import gc

import pytest
import torch

from ctxprobe.runner import Settings, generate, logits, prefill, score
from ctxprobe.runner.weights import LayerWeights, layout

pytest.importorskip("transformers")

from ctxprobe.runner import load_model  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
FAMILIES = ["llama4", "qwen3_moe"]                 # llama4: chunked-local layers of 64; qwen3_moe: experts
WEIGHTS = ["resident", "host", "disk"]
# (KV tier, hidden-state tier); chunks of 37 and K/V blocks of 16 divide neither the prompt nor each other.
TIERS = [("device", "host"), ("host", "host"), ("disk", "disk"), ("host", "disk")]
SCORE_TIERS = [("host", "host"), ("disk", "disk")]
CHUNK, BLOCK, PROMPT_LEN = 37, 16, 150


def ids(n, vocab, seed=1):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def settings(kv_tier="host", hidden_tier="host", offload_dir=None):
    return Settings(chunk_tokens=CHUNK, kv_block_tokens=BLOCK, kv_tiers=kv_tier, hidden_tier=hidden_tier,
                    offload_dir=None if offload_dir is None else str(offload_dir))


def allocated(device, collect: bool = False) -> int:
    """Bytes the caching allocator has handed out on `device` (0 on the CPU, which has no counter).
    collect: run the cycle collector first (a dropped model is a cycle: blocks <-> weight_source).
    A pass must free its device memory by reference counting alone, so passes are measured without."""
    if torch.device(device).type != "cuda":
        return 0
    if collect:
        gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()     # also settles blocks whose frees waited on side-stream events
    return torch.cuda.memory_allocated()


def warm_up(reference, device, prompt):
    """One plain pass of a resident copy: per-device caches (RoPE frequencies, the cuBLAS
    workspace, the attention kernel pick) are made here, not counted as a leak later."""
    if torch.device(device).type == "cuda":
        warm = load_model(reference.path, device=device, dtype="float32")
        warm.logits(prompt)
        del warm


def load(reference, device, weights, dtype="float32"):
    m = load_model(reference.path, device=device, dtype=dtype, weights=weights)
    on_cuda = torch.device(device).type == "cuda"
    # On a CPU device the host is the device: "host" loads resident.
    assert m.weight_tier == (weights if weights != "host" or on_cuda else "resident")
    return m


def assert_at_rest(m, device):
    """Between passes, host- and disk-tier blocks hold no device memory (host views or meta)."""
    kinds = {p.device.type for p in m.blocks.parameters()}
    want = {"resident": {torch.device(device).type}, "host": {"cpu"}, "disk": {"meta"}}[m.weight_tier]
    assert kinds == want, (m.weight_tier, kinds)
    assert m.output.weight.device.type == torch.device(device).type


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls: a second intra-op thread only adds waiting (seconds on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tiny_models):
    """family -> the CPU float32 model (its .path is the checkpoint)."""
    return tiny_models


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kv_tier,hidden_tier", TIERS, ids=[f"kv_{k}-hidden_{h}" for k, h in TIERS])
@pytest.mark.parametrize("weights", WEIGHTS, ids=lambda w: f"weights_{w}")
@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_prefill_equals_cpu_logits(reference, family, weights, kv_tier, hidden_tier, device, tmp_path):
    ref = reference(family)
    prompt = ids(PROMPT_LEN, ref.config.vocab_size)
    want = ref.logits(prompt)
    warm_up(ref, device, prompt)
    before_load = allocated(device, collect=True)
    m = load(ref, device, weights)
    assert (logits(m, prompt).cpu() - want).abs().max().item() <= 1e-4    # the plain forward, weights streamed
    assert_at_rest(m, device)
    start = allocated(device)
    got = prefill(m, prompt, settings=settings(kv_tier, hidden_tier, tmp_path), all_logits=True)
    assert got.logits.device.type == "cpu" and got.logits.shape == want.shape
    assert (got.logits - want).abs().max().item() <= 1e-4
    assert_at_rest(m, device)
    assert list(tmp_path.iterdir()) == [], "offload files must be removed when the prefill ends"
    assert allocated(device) == start, "device memory left after a pass"
    del m
    assert allocated(device, collect=True) == before_load, "device memory left after the model was dropped"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kv_tier,hidden_tier", SCORE_TIERS, ids=[f"kv_{k}-hidden_{h}" for k, h in SCORE_TIERS])
@pytest.mark.parametrize("weights", ["host", "disk"], ids=lambda w: f"weights_{w}")
@pytest.mark.parametrize("family", FAMILIES)
def test_score_and_generate_equal_the_cpu(reference, family, weights, kv_tier, hidden_tier, device, tmp_path):
    ref = reference(family)
    V = ref.config.vocab_size
    ctx = ids(140, V, seed=7)
    greedy = generate(ref, ctx + [3, 4], 3, settings=settings())    # a branch whose answer IS the greedy one
    branches = [([3, 4], greedy), (ids(1, V, 8), ids(3, V, 9)), ([], ids(2, V, 10)), (ids(9, V, 11), ids(1, V, 12))]
    want = score(ref, ctx, branches, settings=settings())
    m = load(ref, device, weights)
    logits(m, ctx)                 # per-device caches made once (see warm_up)
    start = allocated(device)
    s = settings(kv_tier, hidden_tier, tmp_path)
    got = score(m, ctx, branches, settings=s)
    for g, w in zip(got, want):
        assert (g.exact, g.first_rank, g.greedy) == (w.exact, w.first_rank, w.greedy), (g, w)
        assert abs(g.logprob - w.logprob) <= 1e-4 * max(1.0, abs(w.logprob)), (g, w)
    assert got[0].exact
    assert generate(m, ctx, 6, settings=s) == generate(ref, ctx, 6, settings=settings())
    assert_at_rest(m, device)
    assert list(tmp_path.iterdir()) == []
    assert allocated(device) == start, "device memory left after score and generate"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weights", WEIGHTS, ids=lambda w: f"weights_{w}")
def test_layer_weights_traffic_is_what_the_layout_says(reference, weights, device):
    """One pass driven by hand: inside enter(l)..leave(l) block l holds the checkpoint's values on
    the compute device; bytes moved / read are the layout's bytes per layer, once per pass."""
    ref = reference("qwen3_moe")
    m = load(ref, device, weights)
    on_cuda = torch.device(device).type == "cuda"
    source = getattr(m.blocks, "weight_source", None)
    layer_sizes = [layout(b, torch.float32)[1] for b in ref.blocks]
    param_bytes = sum(p.numel() * 4 for p in ref.blocks.parameters())      # float32, unpadded
    if m.weight_tier == "resident":
        moved, read = 0, 0
    elif m.weight_tier == "host":
        assert source.nbytes == sum(layer_sizes) and all(a.is_pinned() for a in source.arenas)
        moved, read = sum(layer_sizes), 0
    else:
        assert sum(r.nbytes for reads in source.reads for r in reads) == param_bytes
        moved, read = (sum(layer_sizes) if on_cuda else 0), param_bytes
    for n_pass in (1, 2):
        weights_ = LayerWeights(m.blocks, device)
        try:
            for layer, (block, ref_block) in enumerate(zip(m.blocks, ref.blocks)):
                weights_.enter(layer)
                for (name, p), (_, p_ref) in zip(block.named_parameters(), ref_block.named_parameters()):
                    assert p.device.type == torch.device(device).type, (layer, name, p.device)
                    assert torch.equal(p.cpu(), p_ref), (n_pass, layer, name)
                weights_.leave(layer)
        finally:
            weights_.restore()
        assert (weights_.bytes_moved, weights_.bytes_read) == (moved, read), n_pass
        assert_at_rest(m, device)
    if m.weight_tier == "disk" and on_cuda:
        assert all(b.is_pinned() for b in source._staging)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_streamed_prefill_picks_the_float32_argmax(reference, device, tmp_path):
    """bf16 on the device (the fused attention kernels), weights from host arenas (from disk on the
    CPU), K/V streamed from the host: within 6% of the largest float32 logit (2-3% measured on the
    CPU), so the argmax agrees wherever float32's top two are more than twice that apart.
    A dense family: in bf16 a tiny MoE's router flips experts and the error is then not bf16's."""
    ref = reference("llama")
    prompt = ids(PROMPT_LEN, ref.config.vocab_size, seed=2)
    want = ref.logits(prompt)
    m = load(ref, device, "host" if torch.device(device).type == "cuda" else "disk", dtype="bfloat16")
    got = prefill(m, prompt, settings=settings("host", "host", tmp_path), all_logits=True).logits
    assert got.dtype == torch.float32
    tol = 0.06 * want.abs().max().item()
    top2 = want.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * tol
    assert clear.sum() >= 15, "too few clear positions to test anything"
    assert torch.equal(got.argmax(-1)[clear], want.argmax(-1)[clear])
    assert (got - want).abs().max().item() <= tol


@pytest.mark.parametrize("device", DEVICES)
def test_a_preset_in_host_arenas_planned_on_the_device_equals_its_resident_twin(device):
    """bench/runner.py's path: a preset drawn on the device, its blocks copied into host arenas
    (HostArenas(copy=True)), prefilled with the planner's settings for this machine (settings=None)."""
    from ctxprobe.runner.presets import build_preset

    resident = build_preset("tiny", device=device, seed=3)
    host = build_preset("tiny", device=device, seed=3, weights="host")
    assert host.weight_tier == ("host" if torch.device(device).type == "cuda" else "resident")
    prompt = ids(PROMPT_LEN, host.config.vocab_size, seed=5)
    want = resident.logits(prompt).cpu()
    assert (prefill(host, prompt, all_logits=True).logits - want).abs().max().item() <= 1e-4
    assert_at_rest(host, device)


def test_a_bare_cuda_device_means_the_current_one(monkeypatch):
    """LayerWeights(blocks, "cuda") compares its device with the parameters' (cuda:0): a bare
    "cuda" left unresolved made resident blocks look like host ones, copied into arenas."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    weights_ = LayerWeights(torch.nn.ModuleList(), "cuda")
    assert weights_.device == torch.device("cuda", 0) and not weights_.active


@pytest.fixture
def one_rank_group(request):
    """A process group of one rank on a free port, as bench/ring.py starts it: NCCL on a CUDA
    device, gloo on the CPU; destroyed afterwards so that other tests see no group."""
    import torch.distributed as dist

    from processes import free_port

    device = request.node.callspec.params["device"]
    if dist.is_initialized():
        pytest.fail("a process group is already initialised in this process")
    backend = "nccl" if device == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(0)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    try:
        yield backend
    finally:
        dist.destroy_process_group()


# Last in the file: a hung collective is killed here (stacks dumped) without costing the other tests.
@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("device", DEVICES)
def test_one_rank_group_sharded_prefill_equals_the_plain_prefill(reference, device, one_rank_group, tmp_path):
    import torch.distributed as dist

    from ctxprobe.runner.distributed import World

    assert dist.get_backend() == one_rank_group and dist.get_world_size() == 1
    ref = reference("llama4")
    prompt = ids(PROMPT_LEN, ref.config.vocab_size, seed=4)
    m = load(ref, device, "host")
    world = World(rank=0, size=1, group=dist.group.WORLD)
    s = settings("host", "host", tmp_path)
    plain = prefill(m, prompt, settings=s, all_logits=True)
    assert (plain.logits - ref.logits(prompt)).abs().max().item() <= 1e-4
    start = allocated(device)
    sharded = prefill(m, prompt, settings=s, all_logits=True, ring=world)
    assert (sharded.logits - plain.logits).abs().max().item() <= 1e-4
    branches = [(prompt[:3], prompt[3:7]), ([], prompt[7:9])]
    # the path `prefill`, `score` and `generate` take under torchrun
    assert (prefill(m, prompt, settings=s, ring=world).last_logits - plain.last_logits).abs().max().item() <= 1e-4
    got = score(m, prompt, branches, settings=s, ring=world)
    tokens = generate(m, prompt, 5, settings=s, ring=world)
    for g, w in zip(got, score(m, prompt, branches, settings=s)):
        assert (g.greedy, g.first_rank) == (w.greedy, w.first_rank) and abs(g.logprob - w.logprob) <= 1e-4
    assert tokens == generate(m, prompt, 5, settings=s)
    assert_at_rest(m, device)
    assert list(tmp_path.iterdir()) == []
    assert allocated(device) == start
    # The group itself works on this device: one collective (NCCL on the card).
    x = torch.arange(4.0, device=device)
    dist.all_reduce(x)
    assert x.tolist() == [0.0, 1.0, 2.0, 3.0]

