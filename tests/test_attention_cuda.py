"""The CUDA paths (fused kernels, side-stream prefetch) against the reference; these run only on
a machine with a CUDA device (the dev machine has none: bench/attention.py covers the card)."""

from __future__ import annotations

import pytest
import torch

from attention import KVStore, attend, attend_reference, available_backends, chunked_attention

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
@pytest.mark.parametrize("group,head_dim", [(1, 64), (5, 128)])
def test_cuda_backend_matches_reference(backend, mask, group, head_dim):
    q = rand(1, 2 * group, 200, head_dim, seed=1)
    k, v = rand(1, 2, 300, head_dim, seed=2), rand(1, 2, 300, head_dim, seed=3)
    kw = dict(mask, q_start=50)
    ref_out, ref_lse = attend_reference(q.float(), k.float(), v.float(), **kw)
    out, lse = attend(q, k, v, backend=backend, **kw)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    empty = torch.isneginf(ref_lse)
    assert torch.equal(torch.isneginf(lse), empty)
    assert (out.float() - ref_out).abs().max().item() <= 3e-2
    assert (lse[~empty] - ref_lse[~empty]).abs().max().item() <= 3e-2


@pytest.mark.parametrize("tier,fp8", [("device", False), ("host", False), ("disk", False), ("host", True)])
def test_streamed_blocks_on_cuda_match_reference(tier, fp8, tmp_path):
    T = 700
    k, v = rand(1, 2, T, 64, seed=1, dtype=torch.float32), rand(1, 2, T, 64, seed=2, dtype=torch.float32)
    store = KVStore(2, 64, tier=tier, block_size=128, dtype=torch.float32, device="cuda", path=tmp_path, fp8=fp8)
    store.append(k.cpu(), v.cpu())
    q = rand(1, 8, 300, 64, seed=3, dtype=torch.float32)
    out, lse = chunked_attention(q, store, q_start=400, backend="torch")
    ref_out, ref_lse = attend_reference(q, k, v, q_start=400)
    tol_out, tol_lse = (0.06 * v.abs().max().item(), 0.1) if fp8 else (1e-4, 1e-4)
    assert (out - ref_out).abs().max().item() <= tol_out
    assert (lse - ref_lse).abs().max().item() <= tol_lse
    store.close()
