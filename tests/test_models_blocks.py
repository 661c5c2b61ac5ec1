"""The block interface the streaming runner drives, and the fast paths inside blocks against their references."""

import pytest
import torch

from ctxprobe import attention
from ctxprobe.models import blocks, rope

pytest.importorskip("transformers")

from ctxprobe.runner import load_model  # noqa: E402
from tiny_models import save_tiny  # noqa: E402


@pytest.fixture(scope="module")
def llama4(tmp_path_factory):
    path, _ = save_tiny(tmp_path_factory.mktemp("llama4"), "llama4")
    return load_model(path, device="cpu")


def chunked_forward(model, ids, cuts):
    """Layer by layer over token chunks, each chunk attending to the KV of all chunks so far."""
    x = model.embed(ids)
    pos = torch.arange(len(ids))
    bounds = list(zip([0, *cuts], [*cuts, len(ids)]))
    for block in model.blocks:
        ks, vs, outs = [], [], []
        for a, b in bounds:
            q, k, v = block.qkv(x[a:b], pos[a:b])
            ks.append(k)
            vs.append(v)
            out, _ = attention.attend(q, torch.cat(ks, 2), torch.cat(vs, 2), scale=block.scale, q_start=a,
                                      k_start=0, **block.mask)
            outs.append(out)
        x = torch.cat([block.finish(x[a:b], o) for (a, b), o in zip(bounds, outs)])
    return model.head(x).float()


def test_block_interface_over_token_chunks_equals_logits(llama4):
    """Chunks that straddle Llama 4's 64-token attention chunks and NoPE temperature positions."""
    ids = torch.randint(0, 300, (210,), generator=torch.Generator().manual_seed(3))
    full = llama4.logits(ids)
    assert (chunked_forward(llama4, ids, [50, 100, 177]) - full).abs().max().item() < 1e-4


def test_block_interface_shapes(llama4):
    cfg = llama4.config
    x = llama4.embed(torch.arange(7))
    assert x.shape == (7, cfg.dim)
    for i, block in enumerate(llama4.blocks):
        q, k, v = block.qkv(x, torch.arange(7))
        assert q.shape == (1, cfg.n_heads, 7, cfg.head_dim)
        assert k.shape == v.shape == (1, cfg.n_kv_heads, 7, cfg.head_dim)
        assert block.mask == dict(causal=True, chunk_size=64 if i < 3 else None, window=None)
        assert block.scale == cfg.head_dim ** -0.5
        assert block.finish(x, q).shape == x.shape
    assert llama4.head(x).shape == (7, cfg.vocab_size)


@pytest.mark.parametrize("kind,top_k,scale_input", [("linear", 2, False), ("fused", 1, True), ("fused", 3, True)])
def test_grouped_dispatch_equals_dense_reference(kind, top_k, scale_input):
    g = torch.Generator().manual_seed(0)
    E, D, F, T = 5, 16, 8, 40
    experts = blocks.Experts(E, D, F) if kind == "linear" else blocks.FusedExperts(E, D, F)
    for p in experts.parameters():
        p.copy_(torch.randn(p.shape, generator=g) / 4)
    x = torch.randn(T, D, generator=g)
    logits = torch.randn(T, E, generator=g)
    logits[:, 4] = -1e9                      # expert 4 receives no token: the loop must skip it
    w, idx = torch.topk(logits.softmax(-1), top_k, dim=-1)
    fast = blocks.grouped_dispatch(experts, x, idx, w, scale_input)
    slow = blocks.dense_dispatch(experts, x, idx, w, scale_input)
    assert torch.allclose(fast, slow, atol=1e-5)


class ScaleExperts(blocks.Experts):
    """Stub experts: expert e multiplies its input by scales[e] (row-independent, so bits are exact)."""

    def __init__(self, scales):
        super().__init__(len(scales), 1, 1)
        self.scales = scales

    def expert(self, e, x_ND):
        return x_ND * self.scales[e]


def test_grouped_dispatch_sums_each_tokens_experts_in_router_order():
    """Each token's K outputs are summed in the router's k order, whatever the experts' order, so the
    result is one fixed sum (index_add_ summed in expert order, with atomic adds on CUDA)."""
    experts = ScaleExperts([1e8, 1.0, -1e8])
    x = torch.ones(2, 4)
    idx = torch.tensor([[0, 2, 1], [1, 0, 2]])          # k order; expert order is 0, 1, 2 for both
    w = torch.ones(2, 3)
    out = blocks.grouped_dispatch(experts, x, idx, w, scale_input=False)
    # float32: (1e8 - 1e8) + 1 = 1, while (1 + 1e8) - 1e8 = 0 and (1e8 + 1) - 1e8 = 0
    assert out[0].tolist() == [1.0] * 4
    assert out[1].tolist() == [0.0] * 4
    assert blocks.grouped_dispatch(experts, x[:0], idx[:0], w[:0], scale_input=False).shape == (0, 4)


def test_adjacent_pair_rope_is_half_split_rope_on_permuted_dims():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 11, 16, generator=g)
    ang = rope.angles(torch.arange(100, 111), rope.inv_freq(16, 10000.0))
    perm = torch.cat([torch.arange(0, 16, 2), torch.arange(1, 16, 2)])   # (x0, x2, ..., x1, x3, ...)
    adjacent = rope.rotate_adjacent_pairs(x, ang)
    half = rope.rotate_half_split(x[..., perm], ang)
    assert torch.allclose(adjacent[..., perm], half, atol=1e-6)


def test_llama3_scaling_keeps_high_and_slows_low_frequencies():
    plain = rope.inv_freq(64, 500000.0)
    scaled = rope.inv_freq(64, 500000.0, dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                               original_max_position_embeddings=8192))
    assert scaled[0] == plain[0]                                   # shortest wavelength untouched
    assert torch.isclose(scaled[-1], plain[-1] / 8)                # longest wavelength divided by factor
    assert torch.all(scaled <= plain) and torch.all(scaled >= plain / 8)


def test_temperature_formula():
    from ctxprobe.models.llama4 import temperature

    t = temperature(torch.tensor([0, 6, 7, 8191, 8192 * 3 - 1]), floor_scale=8192, attn_scale=0.1)
    import math

    assert t[:4].tolist() == [1.0, 1.0, 1.0, pytest.approx(1 + 0.1 * math.log(2))]
    assert t[4].item() == pytest.approx(1 + 0.1 * math.log(4))


@pytest.mark.parametrize("low,high,old", [(1.0, 4.0, 8192), (1.0, 1.0, 8192), (2.0, 8.0, 64)],
                         ids=["llama3.1", "scout_equal_factors", "short"])
def test_llama3_inv_freq_equals_transformers(low, high, old):
    """Including Llama 4 Scout's low_freq_factor == high_freq_factor (the smoothing band is empty)."""
    from transformers import Llama4TextConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = dict(factor=16.0, low_freq_factor=low, high_freq_factor=high, original_max_position_embeddings=old)
    cfg = Llama4TextConfig(head_dim=128, rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, **scaling))
    want, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg)
    got = rope.inv_freq(128, 500000.0, scaling)
    assert not got.isnan().any() and torch.equal(got, want.float())
