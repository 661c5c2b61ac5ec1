"""Ring attention (attention.ring) and sequence sharding (attention.shard).

The oracle is single-process `attend` over the whole sequence, sharded the same way. Real gloo
process groups of 2, 3 and 4 processes run every case; each world is spawned once (module
cache) and reports per-case errors, which the parametrised tests below assert on.
"""

from __future__ import annotations

import datetime
import itertools

import pytest
import torch

from ctxprobe.attention import attend, attend_reference, shard, shard_positions, shard_ranges, unshard
from ctxprobe.attention.masks import block_visible
from ctxprobe.attention.reference import visible
from ctxprobe.attention.ring import last_needed_step, ring_attend
from ctxprobe.attention.shard import chunk_bounds, shard_len
from processes import finish_rank, spawned_once

TOL = 1e-5

# name -> (T, B, Hq, Hkv, D, mask kwargs, layout[, Dv, sinks]). Lengths are not multiples of 2W
# on purpose. Dv (default D) is the value head dim; sinks: whether a per-head sink logit is used.
CASES = {
    "causal_zigzag_pow2": (64, 1, 4, 4, 16, dict(causal=True), "zigzag"),
    "causal_zigzag_gqa_odd": (37, 2, 4, 2, 8, dict(causal=True), "zigzag"),
    "full_zigzag": (29, 1, 2, 1, 8, dict(causal=False), "zigzag"),
    "chunked_zigzag": (50, 1, 6, 2, 8, dict(causal=True, chunk_size=7), "zigzag"),
    "window_zigzag": (45, 1, 4, 1, 8, dict(causal=True, window=6), "zigzag"),
    "window_chunked_zigzag": (53, 1, 4, 2, 8, dict(causal=True, chunk_size=16, window=5), "zigzag"),
    "window_noncausal_zigzag": (31, 1, 2, 2, 8, dict(causal=False, window=5), "zigzag"),
    "causal_contiguous_gqa": (33, 1, 6, 2, 8, dict(causal=True), "contiguous"),
    "chunked_contiguous": (41, 2, 4, 4, 8, dict(causal=True, chunk_size=8), "contiguous"),
    "tiny_zigzag": (2, 1, 2, 1, 4, dict(causal=True), "zigzag"),  # W >= 3: some ranks hold nothing
    "tiny_full": (3, 1, 2, 1, 4, dict(causal=False), "zigzag"),
    "dv_smaller_causal_gqa": (37, 2, 4, 2, 12, dict(causal=True), "zigzag", 8, False),
    "dv_larger_window": (45, 1, 4, 1, 8, dict(causal=True, window=6), "zigzag", 12, False),
    "sinks_causal_gqa": (37, 1, 4, 2, 8, dict(causal=True), "zigzag", 8, True),
    "sinks_window_dv": (45, 1, 4, 2, 12, dict(causal=True, window=6), "zigzag", 8, True),  # gpt-oss-like
    "sinks_chunked_contiguous": (41, 1, 4, 4, 8, dict(causal=True, chunk_size=8), "contiguous", 6, True),
    "sinks_tiny": (2, 1, 2, 1, 4, dict(causal=True), "zigzag", 4, True),  # ranks without keys: lse = sink
}


def case_tensors(case, seed):
    """The full q, k, v and sinks (or None) of a case; every rank builds the same ones."""
    seq_len, batch, hq, hkv, d, _, _, *extra = case
    dv, with_sinks = extra or (d, False)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, h, seq_len, dim, generator=g) for h, dim in ((hq, d), (hkv, d), (hkv, dv)))
    return q, k, v, (torch.randn(hq, generator=g) + 2 if with_sinks else None)
WORLD_SIZES = (2, 3, 4)
MODEL_WORLD_SIZES = (2, 3)


# --- sharding ---------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["zigzag", "contiguous"])
def test_shards_cover_the_sequence_once_and_unshard_inverts(layout):
    for seq_len, world_size in itertools.product([0, 1, 5, 8, 37, 64], [1, 2, 3, 4]):
        x = torch.arange(seq_len).view(1, 1, seq_len, 1).expand(2, 3, seq_len, 4)
        shards = [shard(x, r, world_size, layout) for r in range(world_size)]
        assert torch.equal(unshard(shards, layout), x)
        for r, s in enumerate(shards):
            positions = shard_positions(seq_len, r, world_size, layout)
            assert torch.equal(s[0, 0, :, 0], positions)  # x holds its own positions
            assert s.shape[2] == shard_len(seq_len, r, world_size, layout)


def test_zigzag_places_chunk_r_and_its_mirror():
    chunks = chunk_bounds(80, 8)
    assert shard_ranges(80, 1, 4, "zigzag") == [chunks[1], chunks[6]]
    assert shard_ranges(80, 0, 1, "zigzag") == [(0, 80)]  # adjacent pieces coalesce
    assert [e - s for s, e in chunk_bounds(10, 4)] == [3, 3, 2, 2]  # torch.tensor_split sizes


def test_aligned_boundaries_fall_on_multiples_of_align():
    for seq_len, world_size in itertools.product([7, 100, 129, 1000], [1, 2, 3, 4]):
        for start, end in chunk_bounds(seq_len, 2 * world_size, align=16):
            assert start % 16 == 0 or start == seq_len  # empty chunks sit at the end
            assert end % 16 == 0 or end == seq_len
        x = torch.arange(seq_len).view(1, 1, seq_len)
        shards = [shard(x, r, world_size, align=16) for r in range(world_size)]
        assert torch.equal(unshard(shards, align=16), x)
    assert chunk_bounds(40, 2, align=16) == [(0, 32), (32, 40)]


def test_shard_rejects_bad_input_with_the_fix():
    x = torch.zeros(1, 1, 8, 1)
    with pytest.raises(ValueError, match="layout"):
        shard(x, 0, 2, layout="striped")
    with pytest.raises(ValueError, match="rank 2"):
        shard(x, 2, 2)
    with pytest.raises(ValueError, match="rank order"):
        unshard([x[:, :, :3], x[:, :, :5]])


# --- block skipping -------------------------------------------------------------------------

def test_block_visible_matches_the_reference_mask():
    for qs, qe, ks, ke in itertools.product(range(9), range(1, 10), range(9), range(1, 10)):
        if qe <= qs or ke <= ks:
            continue
        qpos, kpos = torch.arange(qs, qe), torch.arange(ks, ke)
        for causal, chunk_size, window in itertools.product([True, False], [None, 1, 3, 4], [None, 1, 3]):
            expected = bool(visible(qpos, kpos, causal, chunk_size, window).any())
            assert block_visible((qs, qe), (ks, ke), causal, chunk_size, window) == expected, \
                (qs, qe, ks, ke, causal, chunk_size, window)


def test_zigzag_balances_causal_work_and_local_layers_need_no_ring():
    world_size, seq_len = 4, 64
    ranges_of = [shard_ranges(seq_len, r, world_size, "zigzag") for r in range(world_size)]
    work = []
    for r in range(world_size):
        q = torch.cat([torch.arange(s, e) for s, e in ranges_of[r]])
        work.append(int(visible(q, torch.arange(seq_len), True, None, None).sum()))
    assert len(set(work)) == 1  # every rank sees the same number of (query, key) pairs
    assert all(last_needed_step(ranges_of, j, True, None, None) == world_size - 1 for j in range(world_size))
    # Chunked-local attention: misaligned zigzag shards send KV all the way round (a late piece's
    # left neighbour is the previous rank's late piece); shards aligned to the chunks send none.
    misaligned = [shard_ranges(seq_len, r, world_size, "zigzag") for r in range(world_size)]
    assert last_needed_step(misaligned, 1, True, 12, None) == world_size - 1
    aligned = [shard_ranges(seq_len + 3, r, world_size, "zigzag", align=12) for r in range(world_size)]
    assert all(last_needed_step(aligned, j, True, 12, None) == 0 for j in range(world_size))


def test_without_a_process_group_ring_attend_is_attend():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 23, 8, generator=g) for h in (4, 2, 2))
    out, lse = ring_attend(q, k, v, chunk_size=5)
    ref_out, ref_lse = attend(q, k, v, chunk_size=5)
    torch.testing.assert_close(out, ref_out, atol=TOL, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=TOL, rtol=0)
    sinks = torch.randn(4, generator=g)
    out, lse = ring_attend(q, k, v[..., :5], chunk_size=5, sinks=sinks)
    ref_out, ref_lse = attend_reference(q, k, v[..., :5], chunk_size=5, sinks=sinks)
    torch.testing.assert_close(out, ref_out, atol=TOL, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=TOL, rtol=0)


def test_ring_attend_rejects_mismatched_shards():
    with pytest.raises(ValueError, match="same T"):
        ring_attend(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 5, 8))
    with pytest.raises(ValueError, match="attention.shard"):
        ring_attend(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8), seq_len=9)
    with pytest.raises(ValueError, match=r"v \[B, Hkv, T, Dv\]"):
        ring_attend(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 5, 6))
    with pytest.raises(ValueError, match=r"sinks must be a float tensor \[Hq\] = \[2\]"):
        ring_attend(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 6), sinks=torch.zeros(1))


def test_nccl_warm_up_runs_once_per_group_on_the_shards_device(monkeypatch):
    """NCCL needs one collective on a group before a P2P batch that skips ranks: it must run on
    the shard's device (not whatever "cuda" means), also for a group initialised without naming a
    backend (cpu:gloo,cuda:nccl), and again for a re-initialised default group."""
    from types import SimpleNamespace

    import ctxprobe.attention.ring as ring
    reduced = []
    fake = SimpleNamespace(
        is_available=lambda: True, is_initialized=lambda: True, get_rank=lambda g=None: 0,
        get_world_size=lambda g=None: 2, get_backend=lambda g=None: "cpu:gloo,cuda:nccl",
        all_reduce=lambda t, group=None: reduced.append(t.device), group=SimpleNamespace(WORLD=object()))
    monkeypatch.setattr(ring, "dist", fake)
    monkeypatch.setattr(ring, "_NCCL_READY", set())
    ring.RingComm(None, torch.device("cpu"))
    ring.RingComm(None, torch.device("cpu"))
    assert reduced == [torch.device("cpu")]  # once per group
    fake.group.WORLD = object()  # destroy_process_group + init_process_group
    ring.RingComm(None, torch.device("cpu"))
    assert len(reduced) == 2


# --- real process groups --------------------------------------------------------------------

def _max_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Max |got - want|; entries that are -inf in both count as equal, -inf in one as inf."""
    both_empty = torch.isneginf(got) & torch.isneginf(want)
    diff = (got - want).abs().masked_fill(both_empty, 0.0)
    return float(diff.max()) if diff.numel() else 0.0


def _model_prefill(rank: int, world_size: int, model_dir: str) -> dict:
    """A tiny Llama 4 (chunked-local RoPE layers + a global NoPE layer) prefilled sequence-parallel:
    each rank embeds its shard, runs every block with ring_attend, and the gathered logits must
    equal the one-process forward."""
    from ctxprobe.attention import gather, shard_positions
    from ctxprobe.runner import load_model

    m = load_model(model_dir)
    seq_len, align = 300, m.config.chunk_size  # 64 in the tiny preset: local layers stay on their rank
    ids = torch.randint(0, m.config.vocab_size, (seq_len,), generator=torch.Generator().manual_seed(3))
    pos = shard_positions(seq_len, rank, world_size, align=align)
    with torch.inference_mode():
        x = m.embed(ids[pos])
        for block in m.blocks:
            q, k, v = block.qkv(x, pos)
            out, _ = ring_attend(q, k, v, scale=block.scale, seq_len=seq_len, align=align, **block.mask)
            x = block.finish(x, out)
        logits = gather(m.head(x).float(), seq_len, dim=0, align=align)
        want = m.logits(ids.tolist())
    pieces = len(shard_ranges(seq_len, rank, world_size, align=align))
    return dict(out=_max_error(logits, want), pieces=pieces)


def _worker(rank: int, world_size: int, port: int, out_dir: str, model_dir: str | None) -> None:
    import torch.distributed as dist

    import ctxprobe.attention.ring as ring_mod

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=60))
    transfers = []
    real_batch = ring_mod.dist.batch_isend_irecv

    def counting_batch(ops):
        transfers.append(len(ops))
        return real_batch(ops)

    ring_mod.dist.batch_isend_irecv = counting_batch
    results = {}
    try:
        for name, case in CASES.items():
            mask, layout = case[5], case[6]
            q, k, v, sinks = case_tensors(case, seed=case[0])
            ref_out, ref_lse = attend_reference(q, k, v, sinks=sinks, **mask)
            out, lse = ring_attend(*(shard(t, rank, world_size, layout) for t in (q, k, v)),
                                   layout=layout, sinks=sinks, **mask)
            results[name] = dict(out=_max_error(out, shard(ref_out, rank, world_size, layout)),
                                 lse=_max_error(lse, shard(ref_lse, rank, world_size, layout)))
        # Shards aligned to the local chunks (zigzag, odd length): exact, and no KV crosses the ring.
        transfers.clear()
        seq_len = 32 * world_size + 5
        g = torch.Generator().manual_seed(1)
        q, k, v = (torch.randn(1, 2, seq_len, 8, generator=g) for _ in range(3))
        out, lse = ring_attend(*(shard(t, rank, world_size, align=16) for t in (q, k, v)),
                               chunk_size=16, align=16, seq_len=seq_len)
        ref_out, ref_lse = attend(q, k, v, chunk_size=16)
        results["aligned_chunks_no_transfer"] = dict(
            out=_max_error(out, shard(ref_out, rank, world_size, align=16)),
            lse=_max_error(lse, shard(ref_lse, rank, world_size, align=16)),
            transfers=sum(transfers))
        # A sub-group that excludes rank 0: group ranks differ from global ranks.
        members = list(range(1, world_size))
        group = dist.new_group(members)
        if rank in members and len(members) > 1:
            seq_len, sub_rank = 27, members.index(rank)
            g = torch.Generator().manual_seed(2)
            q, k, v = (torch.randn(1, h, seq_len, 8, generator=g) for h in (4, 2, 2))
            out, lse = ring_attend(*(shard(t, sub_rank, len(members)) for t in (q, k, v)), group=group)
            ref_out, ref_lse = attend(q, k, v)
            results["subgroup"] = dict(out=_max_error(out, shard(ref_out, sub_rank, len(members))),
                                       lse=_max_error(lse, shard(ref_lse, sub_rank, len(members))))
        if model_dir is not None:
            results["model_prefill"] = _model_prefill(rank, world_size, model_dir)
        dist.barrier()
    finally:
        finish_rank(out_dir, rank, results)


@pytest.fixture
def world(request, tmp_path_factory):
    """Per-rank result dicts of one spawned gloo world (spawned once per size per session)."""
    world_size = request.param

    def model_dir():   # a tiny Llama 4 checkpoint for the worlds that also run the model's prefill
        if world_size not in MODEL_WORLD_SIZES:
            return (None,)
        from tiny_models import save_tiny

        return (str(save_tiny(tmp_path_factory.mktemp("tiny_llama4"), "llama4")[0]),)

    return spawned_once(tmp_path_factory, "ring", _worker, world_size, model_dir)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("world", WORLD_SIZES, indirect=True)
@pytest.mark.parametrize("case", list(CASES))
def test_ring_attend_equals_attend(world, case):
    for rank, results in enumerate(world):
        assert results[case]["out"] <= TOL, f"rank {rank}: out differs by {results[case]['out']}"
        assert results[case]["lse"] <= TOL, f"rank {rank}: lse differs by {results[case]['lse']}"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("world", WORLD_SIZES, indirect=True)
def test_aligned_chunked_layer_moves_no_kv(world):
    for rank, results in enumerate(world):
        got = results["aligned_chunks_no_transfer"]
        assert got["out"] <= TOL and got["lse"] <= TOL, f"rank {rank}: {got}"
        assert got["transfers"] == 0, f"rank {rank} posted {got['transfers']} P2P ops"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("world", [3, 4], indirect=True)
def test_ring_attend_on_a_subgroup(world):
    assert "subgroup" not in world[0]
    for rank, results in enumerate(world[1:], start=1):
        assert results["subgroup"]["out"] <= TOL and results["subgroup"]["lse"] <= TOL, f"rank {rank}"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("world", MODEL_WORLD_SIZES, indirect=True)
def test_tiny_model_prefill_over_ranks_equals_one_process(world):
    for rank, results in enumerate(world):
        got = results["model_prefill"]
        assert got["out"] <= TOL, f"rank {rank}: logits differ by {got['out']}"
    assert max(r["model_prefill"]["pieces"] for r in world) == 2  # some rank holds two separate pieces
