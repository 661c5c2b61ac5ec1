"""The CUDA paths (fused kernels, side-stream prefetch) against the reference; these run only on
a machine with a CUDA device (the dev machine has none: bench/attention.py covers the card)."""

from __future__ import annotations

import pytest
import torch

from ctxprobe.attention import KVStore, attend, attend_reference, available_backends, chunked_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
MASKS = [dict(causal=True), dict(causal=False), dict(chunk_size=96), dict(window=70)]


def rand(*shape, seed=0, dtype=torch.bfloat16):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(*shape, generator=g, device="cuda").to(dtype)


def cuda_backends():
    if not torch.cuda.is_available():
        return []
    return [b for b in available_backends(torch.device("cuda")) if b != "reference"]


@pytest.mark.parametrize("backend", cuda_backends() or ["torch"])
@pytest.mark.parametrize("mask", MASKS, ids=str)
# (G, Dk, Dv, sinks): plain; DeepSeek-V3's 192/128 and its absorbed 576/512; gpt-oss's sinks
@pytest.mark.parametrize("group,head_dim,v_dim,sinks", [(1, 64, 64, False), (5, 128, 128, False),
                                                         (4, 192, 128, False), (4, 576, 512, False),
                                                         (8, 64, 64, True)])
def test_cuda_backend_matches_reference(backend, mask, group, head_dim, v_dim, sinks):
    q = rand(1, 2 * group, 200, head_dim, seed=1)
    k, v = rand(1, 2, 300, head_dim, seed=2), rand(1, 2, 300, v_dim, seed=3)
    kw = dict(mask, q_start=50, sinks=rand(2 * group, seed=4, dtype=torch.float32) + 5 if sinks else None)
    ref_out, ref_lse = attend_reference(q.float(), k.float(), v.float(), **kw)
    out, lse = attend(q, k, v, backend=backend, **kw)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    empty = torch.isneginf(ref_lse)
    assert torch.equal(torch.isneginf(lse), empty)
    assert (out.float() - ref_out).abs().max().item() <= 3e-2
    assert (lse[~empty] - ref_lse[~empty]).abs().max().item() <= 3e-2


@pytest.mark.parametrize("tier,fp8", [("device", False), ("host", False), ("disk", False), ("host", True)])
@pytest.mark.parametrize("v_dim,with_sinks", [(64, False), (40, True)])
def test_streamed_blocks_on_cuda_match_reference(tier, fp8, v_dim, with_sinks, tmp_path):
    T = 700
    k, v = rand(1, 2, T, 64, seed=1, dtype=torch.float32), rand(1, 2, T, v_dim, seed=2, dtype=torch.float32)
    store = KVStore(2, 64, v_head_dim=v_dim, tier=tier, block_size=128, dtype=torch.float32, device="cuda",
                    path=tmp_path, fp8=fp8)
    store.append(k.cpu(), v.cpu())
    q = rand(1, 8, 300, 64, seed=3, dtype=torch.float32)
    sinks = rand(8, seed=4, dtype=torch.float32) + 5 if with_sinks else None
    out, lse = chunked_attention(q, store, q_start=400, backend="torch", sinks=sinks)
    ref_out, ref_lse = attend_reference(q, k, v, q_start=400, sinks=sinks)
    tol_out, tol_lse = (0.06 * v.abs().max().item(), 0.1) if fp8 else (1e-4, 1e-4)
    assert (out - ref_out).abs().max().item() <= tol_out
    assert (lse - ref_lse).abs().max().item() <= tol_lse
    store.close()


@pytest.mark.parametrize("head_dim", [64, 128])
def test_auto_finds_a_fused_kernel_for_bf16(head_dim):
    """If the self-check rejected every fused op, attend would fall back to float32 math with a
    dense [Tq, Tk] score matrix: fine at these sizes, out of memory at 128K. Catch that here."""
    from ctxprobe.attention.backends import pick_cuda_op

    assert pick_cuda_op(str(torch.device("cuda", torch.cuda.current_device())), torch.bfloat16, head_dim) is not None


@pytest.mark.parametrize("tier", ["host", "disk"])
def test_streamed_bf16_gqa_over_several_query_chunks(tier, tmp_path):
    """The production path: bf16, GQA 5, head dim 128, KV streamed on the side stream into staging
    buffers that are reused across calls, several query chunks in a row (as the runner does)."""
    T, Hkv, G, D = 900, 2, 5, 128
    k, v = rand(1, Hkv, T, D, seed=1), rand(1, Hkv, T, D, seed=2)
    q = rand(1, Hkv * G, T, D, seed=3)
    store = KVStore(Hkv, D, tier=tier, block_size=256, dtype=torch.bfloat16, device="cuda", path=tmp_path)
    store.append(k, v)
    ref_out, ref_lse = attend_reference(q.float(), k.float(), v.float())
    for q0 in range(0, T, 300):
        out, lse = chunked_attention(q[:, :, q0:q0 + 300], store, q_start=q0)
        assert out.dtype == torch.bfloat16
        # bf16 partial outputs are rounded once per block and once after the merge (0.008 on CPU).
        assert (out.float() - ref_out[:, :, q0:q0 + 300]).abs().max().item() <= 4e-2
        assert (lse - ref_lse[:, :, q0:q0 + 300]).abs().max().item() <= 3e-2
    store.close()
