"""Ring attention's first step when a rank keeps its own K/V share in a KVStore (any tier).

`ring_attend(q, kv=store)`: the store holds this rank's shard, appended in the order
`attention.shard` gives it (its pieces concatenated, so store position 0 is the first token of
the first piece; the piece map comes from the ring plan). At step 0 the rank attends its queries
to its own share: the store's blocks stream onto the compute device (BlockStream: the next block
is copied while this one computes), each block once. Every block of the share holds keys that
this rank's own queries see (a query sees its own position under every mask), so the mask skips
(query piece, key part) pairs inside a block, not whole blocks; a block that straddles the two
zigzag pieces is split at the piece boundary, each part with its absolute k_start. When no other
rank needs the share (world of one; chunked-local layers on aligned shards) it never leaves its
tier whole.

With `values_in_keys` (V is K's leading columns, multi-head latent attention) only K travels,
here and at every later step, and V is its view on arrival.

When the next rank needs the share, it is sent block by block, from the staged block that is
also being computed on: one P2P batch per block (this rank's block t out, the previous rank's
block t in), so the device holds two staging blocks of the own share instead of all of it. The
trade-off: every block is a P2P batch (a fixed cost of ~20-50 us on NCCL), so a block should be
thousands of tokens; and the share received for step 1 is assembled whole on the device, as in
the tensor path (steps >= 1 are unchanged: received shares stay device-resident). Every rank's
store must use the same block_size, since the receiver sizes its buffers from it.

Shapes: Hq / Hkv query / key-value heads, T tokens of this rank's shard, Dk query/key head dim,
Dv value head dim (batch 1).
"""

from __future__ import annotations

import torch

from .blockwise import attend
from .kv_store import KVStore
from .masks import block_visible
from .merge import merge
from .shard import Range, piece_offsets
from .stream import BlockStream


def check_store(q: torch.Tensor, store: KVStore) -> None:
    if q.dim() != 4 or q.shape[0] != 1:
        raise ValueError(f"ring_attend with kv=store expects q [1, Hq, T, D] (a store holds one sequence), "
                         f"got q {tuple(q.shape)}")
    if q.shape[1] % store.n_kv_heads or q.shape[3] != store.head_dim:
        raise ValueError(f"q {tuple(q.shape)} does not fit a store of {store.n_kv_heads} KV heads of key dim "
                         f"{store.head_dim}: need Hq a multiple of {store.n_kv_heads} and Dk = {store.head_dim}")
    if len(store) != q.shape[2]:
        raise ValueError(f"the KV store holds {len(store)} tokens but q holds {q.shape[2]}: append this "
                         f"rank's whole k/v shard to the store (same positions as q) before ring_attend")


def local_pieces(ranges: list[Range], start: int, n: int) -> list[tuple[int, int, int]]:
    """Split shard-local positions [start, start + n) at piece boundaries:
    (local offset, absolute start, length) of each part."""
    parts = []
    for (s, e), offset in zip(ranges, piece_offsets(ranges)):
        lo, hi = max(start, offset), min(start + n, offset + e - s)
        if lo < hi:
            parts.append((lo, s + lo - offset, hi - lo))
    return parts


def own_share_step(q, store: KVStore, comm, ranges_of: list[list[Range]], last_step: list[int], acc: list,
                   *, scale, mask: dict, backend: str):
    """Step 0 of the ring from a store: merges this rank's queries against its own share into
    `acc` (one (out, lse) or None per query piece) and returns the previous rank's share as
    device tensors (k [1, Hkv, n, Dk], v [1, Hkv, n, Dv], q's dtype) when this rank needs it at
    step 1, else None."""
    W, rank = comm.world_size, comm.rank
    mine, prev = ranges_of[rank], (rank - 1) % W
    q_offsets = piece_offsets(mine)
    bs, Hkv, Dk, Dv = store.block_size, store.n_kv_heads, store.head_dim, store.v_head_dim
    shared = store.values_in_keys  # V is K[..., :Dv]: K alone travels

    def pairs(start: int, n: int):
        """(query piece, local offset, absolute key start, length) for every visible pair of a block."""
        return [(i, loc, ks, n_k) for loc, ks, n_k in local_pieces(mine, start, n)
                for i, r in enumerate(mine) if block_visible(r, (ks, ks + n_k), **mask)]

    sending = W > 1 and last_step[rank] >= 1
    incoming, recv_sizes = None, []
    if W > 1 and last_step[prev] >= 1:
        n_prev = sum(e - s for s, e in ranges_of[prev])
        recv_sizes = [min(bs, n_prev - at) for at in range(0, n_prev, bs)]
        incoming = (q.new_empty(1, Hkv, n_prev, Dk),) + (() if shared else (q.new_empty(1, Hkv, n_prev, Dv),))

    blocks = iter(BlockStream(store, range(store.n_blocks), q.device))
    for t in range(max(store.n_blocks, len(recv_sizes))):
        block = next(blocks) if t < store.n_blocks else None  # (local start, k, v [1, Hkv, n, D])
        send = []
        if block is not None and sending:
            send = [block[1].to(q.dtype).contiguous()] + ([] if shared else [block[2].to(q.dtype).contiguous()])
        shapes = []
        if t < len(recv_sizes):
            shapes = [(1, Hkv, recv_sizes[t], Dk)] + ([] if shared else [(1, Hkv, recv_sizes[t], Dv)])
        received = comm.send_recv(send, shapes, q)
        if block is not None:
            start, k, v = block
            for i, loc, ks, n_k in pairs(start, k.shape[2]):
                qs, qe = mine[i]
                out, lse = attend(q.narrow(2, q_offsets[i], qe - qs), k.narrow(2, loc - start, n_k).to(q.dtype),
                                  v.narrow(2, loc - start, n_k).to(q.dtype), scale=scale, q_start=qs,
                                  k_start=ks, backend=backend, **mask)
                acc[i] = (out, lse) if acc[i] is None else merge(*acc[i], out, lse)
        comm.wait()  # before the next block: the staged block may be reused once we ask for it
        for buffer, part in zip(incoming or (), received):
            buffer.narrow(2, t * bs, part.shape[2]).copy_(part)
    if incoming is not None and shared:
        incoming = (incoming[0], incoming[0][..., :Dv])
    return incoming
