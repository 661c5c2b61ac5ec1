"""One layer's K/V during a streamed run: the runner's one adapter over `attention.KVStore`.

`append`, `trim`, `attend` on absolute positions. The store itself (tiers device / pinned host /
disk, block-contiguous, next block prefetched on a side stream under CUDA) and the block-by-block
exact attention (`attention.chunked_attention`) belong to attention/. What this adds:

- absolute positions: the store counts from 0 at `offset`, so a layer can drop old keys;
- trimming: chunked-local layers keep only the keys of the current C-aligned chunk, sliding-window
  layers only the last W; the store is rebuilt at a later offset once a whole block is dead
  (the chunk rule is only translation-invariant by multiples of C, so offsets stay C-aligned);
- traffic accounting (bytes copied from host or disk to the compute device).

Shapes: Hkv key/value heads, Dh head dim, T tokens, Hq query heads.
"""

from __future__ import annotations

import torch

from ctxprobe import attention
from ctxprobe.attention.chunked import visible_blocks
from ctxprobe.attention.masks import Rules, visible_key_range


class LayerKV:
    """K/V of one attention layer, keys at absolute positions [offset, end)."""

    def __init__(self, *, tier: str, device, dtype, n_kv_heads: int, head_dim: int, block_tokens: int,
                 mask: dict, scale: float, offload_dir: str | None = None):
        if tier not in attention.TIERS:
            raise ValueError(f"unknown KV tier {tier!r}; choose one of {', '.join(attention.TIERS)}")
        if tier == "disk" and offload_dir is None:
            raise ValueError("the disk KV tier needs an offload directory: pass --offload-dir")
        self.tier, self.device, self.dtype = tier, torch.device(device), dtype
        self.n_kv_heads, self.head_dim, self.block_tokens = n_kv_heads, head_dim, block_tokens
        self.mask, self.scale, self.offload_dir = dict(mask), scale, offload_dir
        self.rules = Rules(self.mask.get("causal", True), self.mask.get("chunk_size"), self.mask.get("window"))
        self.offset = 0
        self.bytes_moved = 0
        self.store = self._new_store()

    def _new_store(self):
        return attention.KVStore(self.n_kv_heads, self.head_dim, tier=self.tier, block_size=self.block_tokens,
                                 dtype=self.dtype, device=self.device, path=self.offload_dir)

    @property
    def end(self) -> int:
        return self.offset + len(self.store)

    def stored_bytes(self) -> int:
        return self.store.n_blocks * self.store.block_bytes

    def append(self, k_1HTD: torch.Tensor, v_1HTD: torch.Tensor):
        """Keys and values for positions [end, end + T)."""
        self.store.append(k_1HTD, v_1HTD)

    def trim(self, first_query: int):
        """Forget keys that no query at position >= first_query can see, a whole block at a time."""
        keep_from, _ = visible_key_range(first_query, first_query + 1, self.rules)
        if keep_from == float("-inf"):
            return   # a global layer keeps everything
        keep_from = min(int(keep_from), self.end)
        if self.rules.chunk_size is not None:
            keep_from = keep_from // self.rules.chunk_size * self.rules.chunk_size
        if keep_from - self.offset < self.block_tokens:
            return
        old, old_offset = self.store, self.offset
        self.store, self.offset = self._new_store(), keep_from
        # Carry the live tail [keep_from, end) over: at most a chunk or window plus a block of keys.
        for i in range(old.n_blocks):
            b0, b1 = old.block_range(i)
            lo, hi = max(b0, keep_from - old_offset), b1
            if lo >= hi:
                continue
            k, v, _, _ = old.raw_block(i)
            self.store.append(k[:, lo - b0:hi - b0].to(self.dtype), v[:, lo - b0:hi - b0].to(self.dtype))
        old.close()

    def attend(self, q_1HTD: torch.Tensor, q_start: int):
        """Queries at absolute [q_start, q_start + T) over every stored key -> (out in q's dtype, lse float32)."""
        rel = q_start - self.offset
        if self.tier != "device" and (self.device.type == "cuda" or self.tier == "disk"):
            n = len(visible_blocks(self.store, rel, q_1HTD.shape[2], self.rules))
            self.bytes_moved += n * self.store.block_bytes
        return attention.chunked_attention(q_1HTD, self.store, q_start=rel, scale=self.scale, **self.mask)

    def close(self):
        self.store.close()
