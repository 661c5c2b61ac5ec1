"""Attend one query chunk over everything in a KVStore, block by block, merging by log-sum-exp.

Blocks the mask rules exclude for the whole chunk are never copied nor computed; the others
stream in through BlockStream (next block prefetched while this one computes). Sinks join the
merged result once, after the last block (attention/sinks.py).
"""

from __future__ import annotations

import math

import torch

from .blockwise import attend
from .kv_store import KVStore
from .masks import Rules, block_is_visible
from .merge import merge_
from .sinks import apply_sinks, check_sinks
from .stream import BlockStream


def visible_blocks(store: KVStore, q_start: int, Tq: int, rules: Rules) -> list[int]:
    """Indices of the store's blocks that some query in [q_start, q_start + Tq) may see."""
    return [i for i in range(store.n_blocks)
            if block_is_visible(q_start, q_start + Tq, *store.block_range(i), rules)]


def chunked_attention(q_chunk, store: KVStore, *, q_start: int, scale=None, causal=True, chunk_size=None,
                      window=None, backend="auto", sinks=None):
    """q_chunk [1, Hq, Tq, Dk] at absolute positions q_start.. over the store's keys at 0..len(store)-1
    -> out [1, Hq, Tq, Dv] (q's dtype), lse [1, Hq, Tq] float32 (-inf, out 0 where nothing is visible).
    sinks [Hq]: as in `attend`, applied once to the result over the whole store."""
    if q_chunk.dim() != 4 or q_chunk.shape[0] != 1:
        raise ValueError(f"chunked_attention expects q_chunk [1, Hq, Tq, Dk], got {tuple(q_chunk.shape)}")
    if q_chunk.shape[1] % store.n_kv_heads or q_chunk.shape[3] != store.head_dim:
        raise ValueError(f"q_chunk {tuple(q_chunk.shape)} does not fit a store of {store.n_kv_heads} KV heads "
                         f"of dim {store.head_dim}: need Hq a multiple of {store.n_kv_heads} and D = {store.head_dim}")
    check_sinks(sinks, q_chunk.shape[1])
    rules = Rules(causal, chunk_size, window)
    Tq = q_chunk.shape[2]
    scale = 1.0 / math.sqrt(q_chunk.shape[3]) if scale is None else scale
    out = lse = None
    for start, k, v in BlockStream(store, visible_blocks(store, q_start, Tq, rules), q_chunk.device):
        o, l = attend(q_chunk, k.to(q_chunk.dtype), v.to(q_chunk.dtype), scale=scale, causal=causal,
                      q_start=q_start, k_start=start, chunk_size=chunk_size, window=window, backend=backend)
        if out is None:
            out, lse = o.float(), l.clone()  # float32 accumulator, merged in place
        else:
            merge_(out, lse, o, l)
    if out is None:
        out = q_chunk.new_zeros(*q_chunk.shape[:3], store.v_head_dim, dtype=torch.float32)
        lse = torch.full(q_chunk.shape[:3], float("-inf"), dtype=torch.float32, device=q_chunk.device)
    if sinks is not None:  # once, on the float32 accumulator: every block is merged in by now
        out, lse = apply_sinks(out, lse, sinks)
    return out.to(q_chunk.dtype), lse
