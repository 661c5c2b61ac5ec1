"""The prompt's K/V on one process: each layer's K/V in its tier, the hidden states parked off the device.

    for each block l (ctxprobe/runner/loop.py):
        for each chunk [s, e) of the prompt:  (chunk i+1 copied in while chunk i computes)
            q, k, v = block.qkv(x[s:e], pos)
            KV_l.append(k, v)                 (chunked-local / window layers drop what no later query sees)
            x[s:e] = block.finish(x[s:e], attend(q, KV_l))

Only one layer's K/V and one chunk's activations are live on the device; the hidden states of
all T tokens wait in a HiddenBuffer (host or disk).

`LocalKV` is the runner's one adapter over `attention.KVStore` (tiers device / pinned host /
disk, block-contiguous, next block prefetched on a side stream under CUDA; the block-by-block
exact attention is `attention.chunked_attention`). What it adds:
- absolute positions: the store counts from 0 at `offset`, so a layer can drop old keys;
- trimming: chunked-local layers keep only the keys of the current C-aligned chunk, sliding-window
  layers only the last W; the store is rebuilt at a later offset once a whole block is dead
  (the chunk rule is only translation-invariant by multiples of C, so offsets stay C-aligned);
- traffic accounting (bytes copied from host or disk to the compute device).

Shapes: T prompt tokens, D hidden, Hkv key/value heads, Dk/Dv key/value head dims, Hq query heads.
"""

from __future__ import annotations

import torch

from ctxprobe import attention
from ctxprobe.attention.chunked import visible_blocks
from ctxprobe.attention.masks import Rules, visible_key_range
from ctxprobe.runner.context.base import append_kv, kv_dims, tail_step, whole_attention_args
from ctxprobe.runner.hidden import HiddenBuffer
from ctxprobe.runner.memory import Settings


class LocalKV:
    """K/V of one attention layer, keys at absolute positions [offset, end)."""

    def __init__(self, *, tier: str, device, dtype, n_kv_heads: int, head_dim: int, block_tokens: int,
                 mask: dict, scale: float, offload_dir: str | None = None, v_head_dim: int | None = None,
                 values_in_keys: bool = False):
        self.tier, self.device, self.dtype = tier, torch.device(device), dtype
        self.n_kv_heads, self.head_dim, self.block_tokens = n_kv_heads, head_dim, block_tokens
        self.v_head_dim, self.values_in_keys = v_head_dim, values_in_keys   # Dv (None: Dk); V inside K (MLA)
        self.mask, self.scale, self.offload_dir = dict(mask), scale, offload_dir
        self.rules = Rules(self.mask.get("causal", True), self.mask.get("chunk_size"), self.mask.get("window"))
        self.attention_args = self.mask   # for a pass over every visible key (for_block adds sinks)
        self.offset = 0
        self.bytes_moved = 0
        self.store = self._new_store()

    @classmethod
    def for_block(cls, block, settings: Settings, layer: int, device, dtype) -> "LocalKV":
        kv = cls(tier=settings.kv_tier(layer), device=device, dtype=dtype, n_kv_heads=block.n_kv_heads,
                 head_dim=block.head_dim, block_tokens=settings.kv_block_tokens, mask=block.mask,
                 scale=block.scale, offload_dir=settings.offload_dir, **kv_dims(block))
        kv.attention_args = whole_attention_args(block)
        return kv

    def _new_store(self):
        return attention.KVStore(self.n_kv_heads, self.head_dim, tier=self.tier, block_size=self.block_tokens,
                                 dtype=self.dtype, device=self.device, path=self.offload_dir,
                                 v_head_dim=self.v_head_dim, values_in_keys=self.values_in_keys)

    @property
    def end(self) -> int:
        return self.offset + len(self.store)

    def stored_bytes(self) -> int:
        return self.store.n_blocks * self.store.block_bytes

    def append(self, k_1HTD: torch.Tensor, v_1HTD: torch.Tensor):
        """Keys and values for positions [end, end + T)."""
        append_kv(self.store, k_1HTD, v_1HTD)

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
            append_kv(self.store, k[:, lo - b0:hi - b0].to(self.dtype), v[:, lo - b0:hi - b0].to(self.dtype))
        old.close()

    def attend(self, q_1HTD: torch.Tensor, q_start: int, **args):
        """Queries at absolute [q_start, q_start + T) over every stored key -> (out in q's dtype, lse float32).
        args: the attention arguments (default: the mask alone, for a result merged with others)."""
        rel = q_start - self.offset
        if self.tier != "device" and (self.device.type == "cuda" or self.tier == "disk"):
            n = len(visible_blocks(self.store, rel, q_1HTD.shape[2], self.rules))
            self.bytes_moved += n * self.store.block_bytes
        return attention.chunked_attention(q_1HTD, self.store, q_start=rel, scale=self.scale, **(args or self.mask))

    def close(self):
        self.store.close()


def layer_step(block, kv: LocalKV, x_TD: torch.Tensor, start: int) -> torch.Tensor:
    """Tokens at [start, start + T) through one block (a prompt chunk, or a decoded token); their K/V join kv."""
    pos_T = torch.arange(start, start + x_TD.shape[0], device=x_TD.device)
    q, k, v = block.qkv(x_TD, pos_T)
    kv.trim(start)
    kv.append(k, v)
    out, _ = kv.attend(q, start, **kv.attention_args)
    return block.finish(x_TD, out.to(x_TD.dtype))


def _ids(ids, device) -> torch.Tensor:
    return torch.as_tensor(list(ids) if not torch.is_tensor(ids) else ids, dtype=torch.long, device=device)


class LocalContext:
    """One pass's prompt on this process. watch: the loop's FiniteWatch (each layer's output is seen)."""
    kind = "local"

    def __init__(self, model, ids, settings: Settings, watch):
        self.model, self.settings, self.watch = model, settings, watch
        self.T = len(ids)
        self.device, self.dtype = torch.device(model.device), model.dtype
        C = settings.chunk_tokens
        self.spans = [(s, min(s + C, self.T)) for s in range(0, self.T, C)]
        self.ids_T = _ids(ids, "cpu")
        self.hidden = HiddenBuffer(self.T, model.config.dim, self.dtype, tier=settings.hidden_tier,
                                   device=self.device, offload_dir=settings.offload_dir)
        self.kv_bytes_moved = 0

    def embed(self) -> None:
        for s, e in self.spans:
            x = self.model.embed(self.ids_T[s:e].to(self.device))
            self.watch.see(0, x)
            self.hidden.write(s, x)

    def prompt_layer(self, layer: int, block) -> LocalKV:
        """The prompt through `block`, chunk by chunk; -> the layer's K/V."""
        kv = LocalKV.for_block(block, self.settings, layer, self.device, self.dtype)
        try:
            for i, (s, e) in enumerate(self.spans):
                x = self.hidden.read(s, e)
                if i + 1 < len(self.spans):
                    self.hidden.prefetch(*self.spans[i + 1])
                x = layer_step(block, kv, x, s)
                self.watch.see(layer + 1, x)
                self.hidden.write(s, x)
        except BaseException:
            kv.close()
            raise
        return kv

    def tails(self, block, kv: LocalKV, xs, q_starts, own=None, own_start=None):
        """tail_step over this layer's K/V -> (new xs, each tail's K/V)."""
        return tail_step(block, lambda pairs: [kv.attend(q, s) for q, s in pairs], xs, q_starts, own, own_start)

    def done_with(self, kv: LocalKV) -> None:
        self.kv_bytes_moved += kv.bytes_moved

    def keep(self, block, kv: LocalKV) -> LocalKV:
        """The layer's K/V as decoding needs it (a LocalKV already trims as tokens join)."""
        return kv

    def decode_step(self, layer: int, block, kv: LocalKV, x_TD: torch.Tensor, pos: int) -> torch.Tensor:
        """One decoded token through one block: its K/V joins the layer's."""
        return layer_step(block, kv, x_TD, pos)

    def head(self, all_logits: bool):
        """-> (logits [T, V] float32 on the CPU or None, the last prompt token's [V])."""
        self.hidden.sync()
        if all_logits:
            logits = torch.cat([self.model.head(self.hidden.read(s, e)).float().cpu() for s, e in self.spans])
            return logits, logits[-1]
        return None, self.model.head(self.hidden.read(self.T - 1, self.T)).float()[0].cpu()

    @property
    def bytes_moved(self) -> int:
        return self.kv_bytes_moved + self.hidden.bytes_moved

    def close(self) -> None:
        self.hidden.close()
