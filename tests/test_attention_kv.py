"""KV tiers (device, host, disk, fp8), block streaming and chunked_attention against one
reference call over the whole KV; also with a value head dim unlike the key one, and sinks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

import ctxprobe.attention.blockwise as blockwise
from ctxprobe.attention import BlockStream, KVStore, attend_reference, chunked_attention
from ctxprobe.attention.chunked import visible_blocks
from ctxprobe.attention.kv_store import FP8_MAX, dequantize_fp8, quantize_fp8
from ctxprobe.attention.masks import Rules

TOL = 1e-5
# fp8 (e4m3, per-block per-head scale) accuracy bound, measured in docs/attention.md: on N(0, 1)
# q, k, v the output moves by at most ~3% of max|v| and lse by at most ~0.07.
FP8_OUT_REL = 0.06
FP8_LSE = 0.1


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def filled_store(tier, tmp_path, k, v, *, block_size=37, fp8=False, pieces=(0, 50, 51)):
    store = KVStore(k.shape[1], k.shape[3], v_head_dim=v.shape[3], tier=tier, block_size=block_size,
                    dtype=torch.float32, path=tmp_path / "kv", fp8=fp8)
    bounds = list(pieces) + [k.shape[2]]
    for a, b in zip(bounds, bounds[1:]):  # uneven appends that straddle block edges
        store.append(k[:, :, a:b], v[:, :, a:b])
    return store


MASKS = {
    "causal": dict(causal=True),
    "full": dict(causal=False),
    "chunked": dict(causal=True, chunk_size=24),  # chunks cross the 37-token blocks
    "window": dict(causal=True, window=13),
    "chunk_window": dict(causal=True, chunk_size=24, window=100),
}


# name -> (value head dim, sinks): DeepSeek-V3-like Dv < Dk, Dv > Dk, gpt-oss-like sinks
VARIANTS = {"plain": (64, False), "dv_smaller": (40, False), "dv_larger": (72, False), "sinks": (64, True),
            "sinks_dv_smaller": (40, True)}


@pytest.mark.parametrize("tier", ["device", "host", "disk"])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_chunked_matches_one_reference_call(tier, mask, variant, tmp_path, monkeypatch):
    monkeypatch.setattr(blockwise, "BLOCK_Q", 16)
    monkeypatch.setattr(blockwise, "MIN_WINDOW_BLOCK", 4)
    T, Hkv, D = 203, 2, 64  # 203 = 5 full blocks of 37 + 18
    Dv, with_sinks = VARIANTS[variant]
    k, v = rand(1, Hkv, T, D, seed=1), rand(1, Hkv, T, Dv, seed=2)
    store = filled_store(tier, tmp_path, k, v)
    assert len(store) == T and store.n_blocks == 6
    for group, (q_start, Tq) in [(1, (0, T)), (4, (150, 53)), (5, (100, 20))]:
        q = rand(1, Hkv * group, Tq, D, seed=3)
        # Sinks near the rows' lse (a few units), so that counting one twice would show.
        sinks = rand(Hkv * group, seed=4) + 3 if with_sinks else None
        kw = dict(MASKS[mask], q_start=q_start, sinks=sinks)
        out, lse = chunked_attention(q, store, **kw)
        assert out.shape == (1, Hkv * group, Tq, Dv)
        ref_out, ref_lse = attend_reference(q, k, v, **kw)
        empty = torch.isneginf(ref_lse)
        assert torch.equal(torch.isneginf(lse), empty)
        assert (out - ref_out).abs().max().item() <= TOL
        assert (lse[~empty] - ref_lse[~empty]).abs().max().item() <= TOL
    store.close()


def test_head_dim_128_gqa_reference_backend(tmp_path):
    k, v = rand(1, 1, 90, 128, seed=1), rand(1, 1, 90, 128, seed=2)
    store = filled_store("host", tmp_path, k, v, block_size=32)
    q = rand(1, 4, 25, 128, seed=3)
    for backend in ("reference", "torch"):
        out, lse = chunked_attention(q, store, q_start=40, chunk_size=32, backend=backend)
        ref_out, ref_lse = attend_reference(q, k, v, q_start=40, chunk_size=32)
        assert (out - ref_out).abs().max().item() <= TOL and (lse - ref_lse).abs().max().item() <= TOL


def test_masked_blocks_are_not_streamed(tmp_path):
    k, v = rand(1, 1, 100, 8), rand(1, 1, 100, 8, seed=1)
    store = filled_store("host", tmp_path, k, v, block_size=10)
    assert visible_blocks(store, 95, 5, Rules(window=8)) == [8, 9]
    assert visible_blocks(store, 35, 5, Rules(chunk_size=20)) == [2, 3]
    assert visible_blocks(store, 0, 5, Rules()) == [0]
    # window 1 (or chunk 1): each query sees only its own key, so out is that key's value.
    out, lse = chunked_attention(rand(1, 2, 3, 8), store, q_start=0, window=1, chunk_size=1)
    assert torch.isfinite(lse).all() and torch.allclose(out, v[:, :, :3].expand(1, 2, 3, 8))
    empty_store = KVStore(1, 8, tier="host", dtype=torch.float32)
    out, lse = chunked_attention(rand(1, 2, 3, 8), empty_store, q_start=0)
    assert (out == 0).all() and torch.isneginf(lse).all()


@pytest.mark.parametrize("v_dim", [8, 5])
def test_stream_yields_blocks_in_order_with_positions(tmp_path, v_dim):
    k, v = rand(1, 2, 45, 8), rand(1, 2, 45, v_dim, seed=1)
    for tier in ("device", "host", "disk"):
        store = filled_store(tier, tmp_path, k, v, block_size=16, pieces=(0, 7))
        got = list(BlockStream(store, [2, 0]))
        assert [s for s, _, _ in got] == [32, 0]
        assert torch.equal(got[0][1], k[:, :, 32:45]) and torch.equal(got[1][2], v[:, :, 0:16])
        store.close()


def test_disk_tier_is_one_unlinked_memory_mapped_file(tmp_path):
    """The file is unlinked as soon as it is made: nothing stays in the directory, even when
    the process dies without cleaning up (next test), and its bytes live while it is open."""
    k, v = rand(1, 2, 40, 8), rand(1, 2, 40, 8, seed=1)
    store = filled_store("disk", tmp_path, k, v, block_size=16)
    assert not any((tmp_path / "kv").iterdir())
    assert os.fstat(store._file.fileno()).st_size == 3 * store.block_bytes
    got = torch.cat([kb for _, kb, _ in BlockStream(store, range(store.n_blocks))], dim=2)
    assert torch.equal(got, k)
    store.close()
    assert not any((tmp_path / "kv").iterdir())


def test_a_killed_process_leaves_no_disk_tier_files(tmp_path):
    script = (
        "import os, signal, sys, torch\n"
        "from ctxprobe.attention import KVStore\n"
        "s = KVStore(2, 8, tier='disk', block_size=16, dtype=torch.float32, path=sys.argv[1])\n"
        "s.append(torch.ones(2, 40, 8), torch.ones(2, 40, 8))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "kv")], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not any((tmp_path / "kv").iterdir())


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_disk_tier_holds_no_file_descriptor_per_block(tmp_path):
    """A mapping per block would keep a descriptor per block open: a long store of many layers
    would run into the open-file limit (often 1024)."""
    def open_files():
        return len(os.listdir("/proc/self/fd"))

    before = open_files()
    k, v = rand(1, 1, 400, 8), rand(1, 1, 400, 8, seed=1)
    store = filled_store("disk", tmp_path, k, v, block_size=8)  # 50 blocks
    assert store.n_blocks == 50 and open_files() - before <= 2
    got = torch.cat([kb for _, kb, _ in BlockStream(store, range(store.n_blocks))], dim=2)
    assert torch.equal(got, k) and open_files() - before <= 2
    store.close()


def test_fp8_roundtrip_within_e4m3_rounding():
    x = rand(2, 3, 50, 16) * torch.tensor([0.01, 1.0, 300.0])[None, :, None, None]
    q, scale = quantize_fp8(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (2, 3)
    err = (dequantize_fp8(q, scale, torch.float32) - x).abs()
    # e4m3: 3 mantissa bits -> half an ulp is 2^-4 relative; subnormals step by 2^-9 * scale.
    bound = x.abs() * 2 ** -4 + scale[:, :, None, None] * 2 ** -9
    assert (err <= bound * 1.0001).all()
    assert (q.float().abs().amax(dim=(2, 3)) <= FP8_MAX).all()


@pytest.mark.parametrize("tier", ["host", "disk"])
@pytest.mark.parametrize("v_dim", [64, 48])
def test_fp8_attention_within_documented_bound(tier, v_dim, tmp_path):
    T, D = 300, 64
    k, v = rand(1, 2, T, D, seed=1), rand(1, 2, T, v_dim, seed=2)
    store = filled_store(tier, tmp_path, k, v, block_size=64, fp8=True)  # last block unfilled
    assert store.raw_block(0)[0].dtype == torch.float8_e4m3fn
    assert store.block_bytes == 2 * 64 * (D + v_dim)  # one byte per value
    q = rand(1, 8, T, D, seed=3)
    out, lse = chunked_attention(q, store, q_start=0)
    ref_out, ref_lse = attend_reference(q, k, v)
    assert (out - ref_out).abs().max().item() <= FP8_OUT_REL * v.abs().max().item()
    assert (lse - ref_lse).abs().max().item() <= FP8_LSE
    assert (out - ref_out).abs().max().item() > 0  # fp8 really was used
    store.close()


def test_store_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown KV tier"):
        KVStore(2, 8, tier="tape")
    with pytest.raises(ValueError, match="fp8"):
        KVStore(2, 8, tier="device", fp8=True)
    with pytest.raises(ValueError, match="path="):
        KVStore(2, 8, tier="disk")
    store = KVStore(2, 8, tier="host", dtype=torch.float32)
    with pytest.raises(ValueError, match=r"\[2, T, 8\]"):
        store.append(torch.zeros(3, 4, 8), torch.zeros(3, 4, 8))
    with pytest.raises(ValueError, match="multiple of 2"):
        chunked_attention(torch.zeros(1, 3, 4, 8), store, q_start=0)
    mla = KVStore(1, 8, v_head_dim=6, tier="host", dtype=torch.float32)
    with pytest.raises(ValueError, match=r"v \[1, T, 6\]"):
        mla.append(torch.zeros(1, 4, 8), torch.zeros(1, 4, 8))
    with pytest.raises(ValueError, match=r"sinks must be a float tensor \[Hq\] = \[2\]"):
        chunked_attention(torch.zeros(1, 2, 4, 8), store, q_start=0, sinks=torch.zeros(3))


@pytest.mark.parametrize("tier", ["device", "host", "disk"])
@pytest.mark.parametrize("fp8", [False, True])
def test_a_block_is_one_contiguous_buffer_holding_k_then_v(tier, fp8, tmp_path):
    """Dv != Dk: the block is still one buffer (one copy to move it), K's values then V's;
    raw_block's k and v are views into it, not copies."""
    if fp8 and tier == "device":
        pytest.skip("fp8 is for the host and disk tiers")
    k, v = rand(1, 3, 20, 8), rand(1, 3, 20, 5, seed=1)
    store = filled_store(tier, tmp_path, k, v, block_size=16, fp8=fp8, pieces=(0,))
    for i in range(store.n_blocks):
        buffer, _, n = store.block_buffer(i)
        assert buffer.dim() == 1 and buffer.is_contiguous() and buffer.numel() == 3 * 16 * (8 + 5)
        kb, vb, _, n2 = store.raw_block(i)
        assert kb.shape == (3, 16, 8) and vb.shape == (3, 16, 5) and n2 == n
        assert kb.untyped_storage().data_ptr() == vb.untyped_storage().data_ptr()  # one buffer
        assert vb.data_ptr() - kb.data_ptr() == 3 * 16 * 8 * kb.element_size()    # V right after K
        if not fp8:
            a, b = store.block_range(i)
            assert torch.equal(kb[:, :n], k[0, :, a:b]) and torch.equal(vb[:, :n], v[0, :, a:b])
    store.close()


@pytest.mark.parametrize("tier,fp8", [("device", False), ("host", False), ("disk", False), ("host", True),
                                      ("disk", True)])
def test_values_in_keys_store_keeps_k_alone(tier, fp8, tmp_path):
    """Multi-head latent attention: V is the latent that leads K ([latent | rope key]). The store
    keeps K alone (Hkv * Dk values a token, not Hkv * (Dk + Dv)), yields V as K's view, and attention
    over it equals the reference over (K, K[..., :Dv])."""
    T, Dk, Dv = 150, 24, 16
    k = rand(1, 1, T, Dk, seed=1)
    store = KVStore(1, Dk, v_head_dim=Dv, tier=tier, block_size=32, dtype=torch.float32, path=tmp_path / "kv",
                    fp8=fp8, values_in_keys=True)
    store.append(k[:, :, :70])                       # v omitted
    store.append(k[:, :, 70:], k[:, :, 70:, :Dv])    # or given as K's view
    assert store.block_bytes == 32 * Dk * (1 if fp8 else 4)
    for _, kb, vb in BlockStream(store, range(store.n_blocks)):
        assert vb.data_ptr() == kb.data_ptr() and vb.shape[-1] == Dv
    q = rand(1, 8, 60, Dk, seed=2)
    sinks = rand(8, seed=3) + 3
    out, lse = chunked_attention(q, store, q_start=90, window=50, sinks=sinks)
    ref_out, ref_lse = attend_reference(q, k, k[..., :Dv], q_start=90, window=50, sinks=sinks)
    tol_out, tol_lse = (FP8_OUT_REL * k.abs().max().item(), FP8_LSE) if fp8 else (TOL, TOL)
    assert (out - ref_out).abs().max().item() <= tol_out and (lse - ref_lse).abs().max().item() <= tol_lse
    store.close()


def test_values_in_keys_rejects_what_it_cannot_hold():
    with pytest.raises(ValueError, match="v_head_dim \\(30\\) must be at most head_dim \\(24\\)"):
        KVStore(1, 24, v_head_dim=30, values_in_keys=True)
    store = KVStore(1, 24, v_head_dim=16, tier="host", dtype=torch.float32, values_in_keys=True)
    k = rand(1, 5, 24)
    with pytest.raises(ValueError, match=r"pass v=None or the view k\[\.\.\., :16\]"):
        store.append(k, k[..., :16].clone())
    with pytest.raises(ValueError, match="needs v"):
        KVStore(1, 24, tier="host", dtype=torch.float32).append(k)
