"""Layer-by-layer streamed prefill gives the logits of the plain full forward (`.logits()`), float32,
for every supported architecture and for every KV / hidden-state tier, with chunk sizes that do not
divide the prompt."""

import pytest
import torch
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ctxprobe.runner import Settings, prefill
from runner_toy import ToyModel

PROMPT_LEN = 150
FAMILIES = ["llama", "mixtral", "qwen3_moe", "llama4"]   # mixtral: window 100; llama4: chunks of 64
TIERS = [("device", "host"), ("host", "host"), ("disk", "disk")]   # (KV tier, hidden-state tier)


@pytest.fixture(scope="module")
def models(tiny_models):
    return tiny_models


def ids(n, vocab, seed=1):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kv_tier,hidden_tier", TIERS)
def test_streamed_prefill_equals_logits(models, family, kv_tier, hidden_tier, tmp_path):
    m = models(family)
    prompt = ids(PROMPT_LEN, m.config.vocab_size)
    settings = Settings(chunk_tokens=37, kv_block_tokens=16, kv_tiers=kv_tier, hidden_tier=hidden_tier,
                        offload_dir=str(tmp_path))
    got = prefill(m, prompt, settings=settings, all_logits=True).logits
    want = m.logits(prompt).float()
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-4
    assert list(tmp_path.iterdir()) == [], "offload files must be removed when the prefill ends"


@pytest.mark.parametrize("chunk,block", [(1, 3), (7, 3), (10, 4), (64, 64), (200, 8)])
def test_toy_masks_every_chunking(chunk, block, tmp_path):
    """Global, chunked-local (5) and sliding-window (7) layers; chunks and KV blocks of every size."""
    m = ToyModel()
    prompt = ids(53, m.config.vocab_size, seed=chunk)
    want = m.logits(prompt)
    for tier in ("device", "disk"):
        got = prefill(m, prompt, settings=Settings(chunk_tokens=chunk, kv_block_tokens=block, kv_tiers=tier,
                                                   offload_dir=str(tmp_path)), all_logits=True).logits
        assert (got - want).abs().max().item() <= 1e-4


def test_local_layers_keep_only_their_span():
    """Chunked-local and window layers drop whole blocks no later query can see; global layers keep all."""
    from ctxprobe.runner.context.local import LocalKV

    def fill(mask):
        kv = LocalKV(tier="device", device="cpu", dtype=torch.float32, n_kv_heads=1, head_dim=2,
                     block_tokens=4, mask=mask, scale=1.0)
        for start in range(0, 100, 10):
            kv.trim(start)
            kv.append(torch.randn(1, 1, 10, 2), torch.randn(1, 1, 10, 2))
        return kv

    assert fill({"causal": True}).offset == 0
    chunked = fill({"causal": True, "chunk_size": 16})
    assert chunked.offset == 80 and chunked.offset % 16 == 0 and chunked.end == 100
    window = fill({"causal": True, "window": 7})
    assert 90 - 7 - 4 < window.offset <= 90 - 6 and window.end == 100


def test_mixed_tiers_per_layer(models, tmp_path):
    m = models("llama4")
    prompt = ids(PROMPT_LEN, m.config.vocab_size, seed=3)
    settings = Settings(chunk_tokens=50, kv_block_tokens=32, kv_tiers=["device", "host", "disk", "host"],
                        hidden_tier="disk", offload_dir=str(tmp_path))
    got = prefill(m, prompt, settings=settings, all_logits=True)
    assert (got.logits - m.logits(prompt)).abs().max().item() <= 1e-4
    assert got.bytes_moved > 0   # disk-tier KV and hidden states were read back


@hypothesis_settings(max_examples=15, deadline=None)
@given(length=st.integers(1, 40), chunk=st.integers(1, 45), block=st.integers(1, 12),
       local=st.sampled_from([{}, {"chunk_size": 3}, {"chunk_size": 8}, {"window": 1}, {"window": 6}]),
       tier=st.sampled_from(["device", "host"]), seed=st.integers(0, 3))
def test_prefill_property(length, chunk, block, local, tier, seed):
    """Any prompt length, chunking, block size and local mask: the same logits as the plain forward."""
    m = ToyModel(masks=({}, local), seed=seed, dim=16, n_heads=2, n_kv_heads=1)
    prompt = ids(length, m.config.vocab_size, seed=seed)
    got = prefill(m, prompt, settings=Settings(chunk_tokens=chunk, kv_block_tokens=block, kv_tiers=tier),
                  all_logits=True).logits
    assert (got - m.logits(prompt)).abs().max().item() <= 1e-4


def test_a_failed_prefill_leaves_no_offload_files(tmp_path):
    """An error mid-run (out of memory at some length, say) must not leave hidden-state or KV files
    behind while the caller, holding the traceback, goes on to the next cell."""
    m = ToyModel()

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    m.blocks[1].finish = boom
    settings = Settings(chunk_tokens=7, kv_block_tokens=4, kv_tiers="disk", hidden_tier="disk",
                        offload_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="boom") as failure:
        prefill(m, ids(30, m.config.vocab_size), settings=settings, keep_kv=True)
    assert failure.traceback and list(tmp_path.iterdir()) == []


def test_pinned_hidden_states_are_registered_at_their_exact_size(monkeypatch):
    """Under CUDA the host hidden-state buffer is page-locked with cudaHostRegister at exactly T x D
    elements (the caching host allocator behind pin_memory=True rounds up to a power of two)."""
    from ctxprobe.runner import pinned

    calls = []

    class FakeCudart:
        def cudaHostRegister(self, ptr, nbytes, flags):
            calls.append((ptr, nbytes))
            return 0

    monkeypatch.setattr(torch.cuda, "cudart", lambda: FakeCudart())
    buf, registered = pinned.page_locked((10, 6), torch.bfloat16)
    assert registered and buf.shape == (10, 6) and calls == [(buf.data_ptr(), 10 * 6 * 2)]
