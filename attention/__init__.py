"""Exact attention over contexts far larger than GPU memory.

`attend(q, k, v, ...) -> (out, lse)` is the one kernel signature; blocks merge with `merge`;
`KVStore` keeps one layer's K/V in a tier (device, pinned host, disk); `chunked_attention`
attends a query chunk over a whole store block by block, prefetching the next block;
`ring_attend` does the same across the ranks of a process group, over `shard`-ed sequences.
All of them take a value head dim Dv unlike the query/key one, and `sinks=` (a per-head logit in
the softmax denominator, gpt-oss); a caller that merges partial results itself applies sinks once
to the merged result with `apply_sinks`.
"""

from .blockwise import attend
from .backends import BACKENDS, available_backends
from .chunked import chunked_attention
from .kv_store import TIERS, KVStore
from .merge import merge
from .reference import attend_reference
from .ring import ring_attend
from .shard import gather, shard, shard_positions, shard_ranges, unshard
from .sinks import apply_sinks
from .stream import BlockStream

__all__ = ["attend", "attend_reference", "merge", "apply_sinks", "KVStore", "TIERS", "chunked_attention",
           "BlockStream", "BACKENDS", "available_backends", "ring_attend", "shard", "unshard",
           "gather", "shard_positions", "shard_ranges"]
