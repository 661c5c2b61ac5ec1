"""Ring attention with a rank's K/V share kept in a KV tier (ring_attend(q, kv=store)).

The oracle is single-process `attend` over the whole sequence, sharded the same way. Gloo
worlds of 2 and 3 processes run every case (each world spawned once per session) and report
per-case errors, which the parametrised tests assert on.
"""

from __future__ import annotations

import datetime
import itertools
import os

import pytest
import torch

from ctxprobe.attention import KVStore, attend, attend_reference, ring_attend, shard
from ctxprobe.attention.ring_tiers import local_pieces
from processes import finish_rank, spawned_once

TOL = 1e-5

# name -> (T, Hq, Hkv, D, mask kwargs, layout, block_size, align[, Dv, sinks[, values_in_keys]]).
# Shard lengths are not multiples of the block size; blocks of 64 hold a whole zigzag shard (both
# pieces in one block). Dv (default D) is the value head dim; sinks: whether a per-head sink logit
# is used; values_in_keys: V is K[..., :Dv] and the store keeps K alone (multi-head latent attention).
CASES = {
    "causal_gqa": (37, 4, 2, 8, dict(causal=True), "zigzag", 4, 1),
    "causal_one_block": (29, 2, 1, 8, dict(causal=True), "zigzag", 64, 1),
    "full": (31, 2, 2, 8, dict(causal=False), "zigzag", 5, 1),
    "chunked_misaligned": (50, 6, 2, 8, dict(causal=True, chunk_size=7), "zigzag", 3, 1),
    "chunked_aligned": (77, 4, 2, 8, dict(causal=True, chunk_size=8), "zigzag", 4, 8),
    "window": (45, 4, 1, 8, dict(causal=True, window=6), "zigzag", 7, 1),
    "contiguous_gqa": (33, 6, 2, 8, dict(causal=True), "contiguous", 4, 1),
    "dv_smaller_causal_gqa": (37, 4, 2, 12, dict(causal=True), "zigzag", 4, 1, 8, False),
    "sinks_window_dv_larger": (45, 4, 1, 8, dict(causal=True, window=6), "zigzag", 7, 1, 10, True),
    "sinks_chunked_aligned": (77, 4, 2, 8, dict(causal=True, chunk_size=8), "zigzag", 4, 8, 8, True),
    "mla_values_in_keys": (37, 4, 1, 12, dict(causal=True), "zigzag", 4, 1, 8, False, True),
}
TIERS = ("host", "disk")
WORLD_SIZES = (2, 3)


def _max_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Max |got - want|; entries that are -inf in both count as equal."""
    both_empty = torch.isneginf(got) & torch.isneginf(want)
    diff = (got - want).abs().masked_fill(both_empty, 0.0)
    return float(diff.max()) if diff.numel() else 0.0


def _run_case(rank: int, world_size: int, case: tuple, tier: str, tmp: str, counts: dict) -> dict:
    seq_len, hq, hkv, d, mask, layout, block_size, align, *extra = case
    dv, with_sinks, values_in_keys = (list(extra) + [False])[:3] if extra else (d, False, False)
    g = torch.Generator().manual_seed(seq_len)  # every rank builds the same full tensors
    q, k, v = (torch.randn(1, h, seq_len, dim, generator=g) for h, dim in ((hq, d), (hkv, d), (hkv, dv)))
    if values_in_keys:
        v = k[..., :dv]
    sinks = torch.randn(hq, generator=g) + 2 if with_sinks else None
    ref_out, ref_lse = attend_reference(q, k, v, sinks=sinks, **mask)
    store = KVStore(hkv, d, v_head_dim=dv, tier=tier, block_size=block_size, dtype=torch.float32, path=tmp,
                    values_in_keys=values_in_keys)
    k_shard = shard(k, rank, world_size, layout, align=align)
    store.append(k_shard, None if values_in_keys else shard(v, rank, world_size, layout, align=align))
    counts.update(blocks_read=0, transfers=0)
    out, lse = ring_attend(shard(q, rank, world_size, layout, align=align), kv=store, layout=layout,
                           align=align, sinks=sinks, **mask)
    result = dict(out=_max_error(out, shard(ref_out, rank, world_size, layout, align=align)),
                  lse=_max_error(lse, shard(ref_lse, rank, world_size, layout, align=align)),
                  blocks=store.n_blocks, **counts)
    store.close()
    return result


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    import ctxprobe.attention.ring as ring_mod

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=60))
    counts = dict(blocks_read=0, transfers=0)
    real_batch, real_block_buffer = ring_mod.dist.batch_isend_irecv, KVStore.block_buffer

    def counting_batch(ops):
        counts["transfers"] += len(ops)
        return real_batch(ops)

    def counting_block_buffer(self, i):
        counts["blocks_read"] += 1
        return real_block_buffer(self, i)

    ring_mod.dist.batch_isend_irecv = counting_batch
    KVStore.block_buffer = counting_block_buffer
    results = {}
    try:
        for (name, case), tier in itertools.product(CASES.items(), TIERS):
            results[f"{name}/{tier}"] = _run_case(rank, world_size, case, tier, os.path.join(out_dir, "kv"), counts)
        dist.barrier()
    finally:
        finish_rank(out_dir, rank, results)


@pytest.fixture
def world(request, tmp_path_factory):
    """Per-rank result dicts of one spawned gloo world (spawned once per size per session)."""
    return spawned_once(tmp_path_factory, "ring_tiers", _worker, request.param)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world", WORLD_SIZES, indirect=True)
@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("case", list(CASES))
def test_ring_attend_from_a_store_equals_attend(world, case, tier):
    for rank, results in enumerate(world):
        got = results[f"{case}/{tier}"]
        assert got["out"] <= TOL, f"rank {rank}: out differs by {got['out']}"
        assert got["lse"] <= TOL, f"rank {rank}: lse differs by {got['lse']}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world", WORLD_SIZES, indirect=True)
def test_aligned_local_layer_reads_each_block_once_and_sends_nothing(world):
    """Chunks of 8 aligned to the shards: no share travels, and a rank reads each of its blocks once."""
    for rank, results in enumerate(world):
        got = results["chunked_aligned/host"]
        assert got["transfers"] == 0, f"rank {rank} posted {got['transfers']} P2P ops"
        assert got["blocks_read"] == got["blocks"], f"rank {rank}: {got}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world", WORLD_SIZES, indirect=True)
def test_the_share_travels_block_by_block(world):
    """Causal zigzag: every share is needed by every rank, so step 0 streams and sends all of a
    rank's blocks (one k and one v send per block) and each block is read exactly once."""
    world_size = len(world)
    for rank, results in enumerate(world):
        got = results["causal_gqa/disk"]
        assert got["blocks_read"] == got["blocks"], f"rank {rank}: {got}"
        # step 0: 2 sends per own block + 2 receives per block of the previous rank's share;
        # steps 1..W-2: a whole-share send and receive (k and v each); step W-1: nothing more.
        prev_blocks = world[(rank - 1) % world_size]["causal_gqa/disk"]["blocks"]
        assert got["transfers"] == 2 * got["blocks"] + 2 * prev_blocks + 4 * (world_size - 2), f"rank {rank}: {got}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world", WORLD_SIZES, indirect=True)
def test_values_in_keys_send_the_keys_alone(world):
    """MLA's store keeps K alone (V is its leading columns): the same causal ring moves one tensor
    per block and per step instead of two, and each block is still read once."""
    world_size = len(world)
    for rank, results in enumerate(world):
        got = results["mla_values_in_keys/host"]
        assert got["blocks_read"] == got["blocks"], f"rank {rank}: {got}"
        prev_blocks = world[(rank - 1) % world_size]["mla_values_in_keys/host"]["blocks"]
        assert got["transfers"] == got["blocks"] + prev_blocks + 2 * (world_size - 2), f"rank {rank}: {got}"


# --- one process ------------------------------------------------------------------------------

@pytest.mark.parametrize("tier", TIERS)
def test_without_a_process_group_a_store_streams_each_block_once(tier, tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 23, 8, generator=g) for h in (4, 2, 2))
    store = KVStore(2, 8, tier=tier, block_size=5, dtype=torch.float32, path=str(tmp_path))
    store.append(k, v)
    read = []
    real_block_buffer = KVStore.block_buffer
    monkeypatch.setattr(KVStore, "block_buffer", lambda self, i: read.append(i) or real_block_buffer(self, i))
    for mask in (dict(causal=True), dict(causal=True, chunk_size=5), dict(causal=True, window=4), dict(causal=False)):
        out, lse = ring_attend(q, kv=store, **mask)
        ref_out, ref_lse = attend(q, k, v, **mask)
        torch.testing.assert_close(out, ref_out, atol=TOL, rtol=0)
        torch.testing.assert_close(lse, ref_lse, atol=TOL, rtol=0)
    assert read == [0, 1, 2, 3, 4] * 4  # one shard attends to all its keys: every block, once per call
    mla = KVStore(2, 8, v_head_dim=3, tier=tier, block_size=5, dtype=torch.float32, path=str(tmp_path))
    mla.append(k, v[..., :3])
    sinks = torch.randn(4, generator=g)
    out, lse = ring_attend(q, kv=mla, window=4, sinks=sinks)
    ref_out, ref_lse = attend_reference(q, k, v[..., :3], window=4, sinks=sinks)
    torch.testing.assert_close(out, ref_out, atol=TOL, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=TOL, rtol=0)
    mla.close()
    store.close()


def test_local_pieces_split_blocks_at_piece_boundaries():
    ranges = [(3, 6), (20, 24)]  # shard-local 0..2 are positions 3..5, 3..6 are 20..23
    assert local_pieces(ranges, 0, 4) == [(0, 3, 3), (3, 20, 1)]
    assert local_pieces(ranges, 4, 4) == [(4, 21, 3)]  # the last block is partly filled
    assert local_pieces(ranges, 0, 7) == [(0, 3, 3), (3, 20, 4)]


def test_ring_attend_rejects_a_store_that_does_not_fit(tmp_path):
    q = torch.zeros(1, 4, 6, 8)
    store = KVStore(2, 8, tier="host", block_size=4, dtype=torch.float32)
    store.append(torch.zeros(2, 5, 8), torch.zeros(2, 5, 8))
    with pytest.raises(ValueError, match="holds 5 tokens but q holds 6"):
        ring_attend(q, kv=store)
    with pytest.raises(ValueError, match="not both"):
        ring_attend(q, q, q, kv=store)
    with pytest.raises(ValueError, match="kv=KVStore"):
        ring_attend(q)
    with pytest.raises(ValueError, match="KV heads"):
        ring_attend(torch.zeros(1, 3, 5, 8), kv=store)
