"""The prompt's K/V sharded across the ranks of a World (sequence parallel, under torchrun).

    rank r holds the prompt positions shard_positions(T, r, W) (zigzag; aligned to the model's
    local-attention chunk when the prompt is long enough, so chunked layers need no KV from
    other ranks), and for each block l:
        q, k, v = block.qkv(x_shard, positions)             (in token chunks)
        out     = ring_attend(q, k, v, ...)                 exact attention over the whole prompt
        x_shard = block.finish(x_shard, out)
        tails   = tail tokens (branches, decoded tokens), replicated on every rank: their queries
                  attend to this rank's K/V shard, the partial (out, lse) of every rank is
                  all-gathered and merged in rank order, then merged with their own K/V

Where things live on a rank (Settings, the same on every rank): this rank's share of layer l's K/V
in settings.kv_tier(l): "device" (tensors), or a KVStore in "host" memory or on "disk" (a file in
settings.offload_dir), which ring_attend(q, kv=store) and the tails stream block by block. The
shard's hidden states, queries and attention output stay on the device (T/W tokens each).

Every rank ends with the same last-token logits, tail logits and generated tokens, so callers
(scoring, the sweep) run identically everywhere and only rank 0 writes. A World of one runs the
same code with no process group (ring_attend is then attend): a cheap test, and a one-GPU check.

Shapes: T prompt tokens, Ts this rank's tokens, Tb tail tokens, D hidden, V vocab, Hq/Hkv heads,
Dh head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ctxprobe import attention
from ctxprobe.attention import gather, shard_positions, shard_ranges
from ctxprobe.attention.masks import Rules, block_visible, visible_key_range
from ctxprobe.attention.ring import ring_attend
from ctxprobe.attention.ring_tiers import local_pieces
from ctxprobe.attention.shard import chunk_align
from ctxprobe.runner.context.base import append_kv, kv_dims, tail_step, whole_attention_args
from ctxprobe.runner.distributed import World
from ctxprobe.runner.memory import Settings


@dataclass
class RingKV:
    """One layer's K/V for this rank's share of the prompt: k [1, Hkv, Ts, Dk] and v [.., Dv] on the device,
    or `store` (a host or disk KVStore holding the same Ts tokens in the same order)."""
    ranges: list[tuple[int, int]]      # absolute [start, end) of the pieces, in k/v order
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    store: attention.KVStore | None = None

    def close(self):
        """Free the K/V (a disk store's file is deleted)."""
        if self.store is not None:
            self.store.close()
        self.k = self.v = self.store = None


def _qkv_in_chunks(block, x_TD: torch.Tensor, pos_T: torch.Tensor, chunk: int):
    """block.qkv over token chunks of the shard (bounds activation memory) -> q, k, v [1, H, Ts, Dh]."""
    if x_TD.shape[0] <= chunk:
        return block.qkv(x_TD, pos_T)
    parts = [block.qkv(x_TD[s:s + chunk], pos_T[s:s + chunk]) for s in range(0, x_TD.shape[0], chunk)]
    return tuple(torch.cat(p, dim=2) for p in zip(*parts))


def _qkv_into_store(block, x_TD: torch.Tensor, pos_T: torch.Tensor, chunk: int, store) -> torch.Tensor:
    """block.qkv over token chunks of the shard, each chunk's k/v appended to `store` as it is
    made (the shard's whole K/V is never on the device) -> q [1, Hq, Ts, Dh]."""
    qs = []
    for s in range(0, max(x_TD.shape[0], 1), chunk):
        q, k, v = block.qkv(x_TD[s:s + chunk], pos_T[s:s + chunk])
        append_kv(store, k, v)
        qs.append(q)
    return qs[0] if len(qs) == 1 else torch.cat(qs, dim=2)


def _new_store(block, tier: str, settings: Settings, dtype, device) -> attention.KVStore:
    return attention.KVStore(block.n_kv_heads, block.head_dim, tier=tier, block_size=settings.kv_block_tokens,
                             dtype=dtype, device=device, path=settings.offload_dir, **kv_dims(block))


def _layer_kv(block, layer: int, x_TD, pos_T, settings: Settings, ranges, dtype):
    """This rank's q [1, Hq, Ts, Dh] and K/V share (RingKV) for one layer, in the layer's tier."""
    tier, chunk = settings.kv_tier(layer), settings.chunk_tokens
    if tier == "device":
        q, k, v = _qkv_in_chunks(block, x_TD, pos_T, chunk)
        return q, RingKV(ranges, k, v)
    kv = RingKV(ranges, store=_new_store(block, tier, settings, dtype, x_TD.device))
    try:
        return _qkv_into_store(block, x_TD, pos_T, chunk, kv.store), kv
    except BaseException:
        kv.close()
        raise


def keep_for_decode(block, kv: RingKV, seq_len: int, settings: Settings) -> RingKV:
    """The part of a layer's share that tokens after the prompt can still see: all of it on a
    global layer; on a chunked-local layer the keys of the prompt's last chunk, on a sliding-window
    layer its last W-1 keys (the rest would sit in memory through the whole decode for nothing)."""
    keep_from, _ = visible_key_range(seq_len, seq_len + 1, Rules(**block.mask))
    if keep_from == float("-inf") or all(s >= keep_from for s, _ in kv.ranges):
        return kv
    kept, at = [], 0    # (absolute start, end, shard-local offset) of what stays, per piece
    for s, e in kv.ranges:
        lo = max(s, int(keep_from))
        if lo < e:
            kept.append((lo, e, at + lo - s))
        at += e - s
    ranges = [(s, e) for s, e, _ in kept]
    if kv.store is None:
        k, v = (torch.cat([t.narrow(2, at, e - s) for s, e, at in kept], dim=2) if kept else t[:, :, :0]
                for t in (kv.k, kv.v))
        return RingKV(ranges, k.clone(), v.clone())
    old = kv.store
    trimmed = RingKV(ranges, store=_new_store(block, old.tier, settings, old.dtype, old.device))
    try:
        wanted = [(at, at + e - s) for s, e, at in kept]     # shard-local [lo, hi), in order
        blocks = [i for i in range(old.n_blocks)
                  if any(lo < old.block_range(i)[1] and old.block_range(i)[0] < hi for lo, hi in wanted)]
        for start, k, v in attention.BlockStream(old, blocks, "cpu"):    # host or disk: views, no copy
            end = start + k.shape[2]
            for lo, hi in wanted:
                a, b = max(lo, start), min(hi, end)
                if a < b:
                    append_kv(trimmed.store, k.narrow(2, a - start, b - a), v.narrow(2, a - start, b - a))
    except BaseException:
        trimmed.close()
        raise
    kv.close()
    return trimmed


def _empty_part(q_1HTD: torch.Tensor, v_head_dim: int):
    B, H, T, _ = q_1HTD.shape
    return (q_1HTD.new_zeros(B, H, T, v_head_dim, dtype=torch.float32),
            torch.full((B, H, T), float("-inf"), dtype=torch.float32, device=q_1HTD.device))


def context_part(block, kv: RingKV, q_1HTD: torch.Tensor, q_start: int):
    """Queries at [q_start, q_start + Tb) over this rank's pieces of the prompt -> (out, lse) fp32."""
    if kv.store is not None:
        return _store_part(block, kv, q_1HTD, q_start)
    acc = _empty_part(q_1HTD, kv.v.shape[-1])
    offset, q_range = 0, (q_start, q_start + q_1HTD.shape[2])
    for s, e in kv.ranges:
        if block_visible(q_range, (s, e), **block.mask):
            out, lse = attention.attend(q_1HTD, kv.k.narrow(2, offset, e - s), kv.v.narrow(2, offset, e - s),
                                        scale=block.scale, q_start=q_start, k_start=s, **block.mask)
            acc = attention.merge(*acc, out, lse)
        offset += e - s
    return acc


def _store_part(block, kv: RingKV, q_1HTD: torch.Tensor, q_start: int):
    """context_part over a store: the blocks holding some visible key stream onto the device
    (BlockStream, next block copied while this one computes); a block that straddles the two
    zigzag pieces is attended part by part, each with its absolute k_start."""
    acc = _empty_part(q_1HTD, kv.store.v_head_dim)
    q_range, store = (q_start, q_start + q_1HTD.shape[2]), kv.store
    visible = {}    # block start (shard-local) -> [(local offset, absolute start, length)]
    for i in range(store.n_blocks):
        start, end = store.block_range(i)
        parts = [(loc, ks, n) for loc, ks, n in local_pieces(kv.ranges, start, end - start)
                 if block_visible(q_range, (ks, ks + n), **block.mask)]
        if parts:
            visible[start] = parts
    blocks = [start // store.block_size for start in visible]
    for start, k, v in attention.BlockStream(store, blocks, q_1HTD.device):
        for loc, ks, n in visible[start]:
            out, lse = attention.attend(q_1HTD, k.narrow(2, loc - start, n).to(q_1HTD.dtype),
                                        v.narrow(2, loc - start, n).to(q_1HTD.dtype), scale=block.scale,
                                        q_start=q_start, k_start=ks, **block.mask)
            acc = attention.merge(*acc, out, lse)
    return acc


def merge_across_ranks(world: World, parts: list[tuple[torch.Tensor, torch.Tensor]]):
    """Each rank's partial (out, lse) per tail -> the merged result, identical on every rank.

    All tails travel in one all_gather (one flat float32 buffer per rank); the merge runs in
    rank order everywhere, so every rank gets the same bits.
    """
    if world.size == 1:
        return [(out.float(), lse.float()) for out, lse in parts]
    flat = torch.cat([t.reshape(-1) for out, lse in parts for t in (out.float(), lse.float())])
    every = [torch.empty_like(flat) for _ in range(world.size)]
    dist.all_gather(every, flat, group=world.group)
    merged = None
    for buffer in every:
        pieces, at = [], 0
        for out, lse in parts:
            o = buffer[at:at + out.numel()].view(out.shape)
            at += out.numel()
            l = buffer[at:at + lse.numel()].view(lse.shape)
            at += lse.numel()
            pieces.append((o, l))
        merged = pieces if merged is None else [attention.merge(*a, *b) for a, b in zip(merged, pieces)]
    return merged


def _last_hidden(world: World, x_TD: torch.Tensor, seq_len: int, align: int, device) -> torch.Tensor:
    """The hidden state of prompt position T-1 [1, D], sent from the rank that holds it to all."""
    if world.size == 1:
        return x_TD[-1:]
    owner = next(r for r in range(world.size)
                 if any(e == seq_len for _, e in shard_ranges(seq_len, r, world.size, align=align)))
    h = x_TD[-1:].contiguous() if world.rank == owner else x_TD.new_empty(1, x_TD.shape[1])
    src = owner if world.group is None else dist.get_global_rank(world.group, owner)
    dist.broadcast(h, src=src, group=world.group)
    return h.to(device)


class RingContext:
    """One pass's prompt sharded over `world`; the same results on every rank."""
    kind = "ring"

    def __init__(self, model, ids, settings: Settings, watch, world: World):
        self.model, self.settings, self.watch, self.world = model, settings, watch, world
        self.T = T = len(ids)
        self.device, self.dtype = torch.device(model.device), model.dtype
        self.align = chunk_align([b.mask.get("chunk_size") for b in model.blocks], T, world.size)
        self.ranges = shard_ranges(T, world.rank, world.size, align=self.align)
        self.pos_T = shard_positions(T, world.rank, world.size, align=self.align)
        self.ids_T = torch.as_tensor(list(ids) if not torch.is_tensor(ids) else ids, dtype=torch.long)
        self.x = None
        self.bytes_moved = 0
        self._own = [None] * len(model.blocks)   # decoding: per layer, (k, v) of the decoded tokens

    def embed(self) -> None:
        self.x = self.model.embed(self.ids_T[self.pos_T].to(self.device))
        self.pos_T = self.pos_T.to(self.device)
        self.watch.see(0, self.x)

    def prompt_layer(self, layer: int, block) -> RingKV:
        """This rank's share through `block` (exact attention over the whole prompt); -> its K/V share."""
        chunk, x = self.settings.chunk_tokens, self.x
        q, kv = _layer_kv(block, layer, x, self.pos_T, self.settings, self.ranges, self.dtype)
        try:
            kv_args = dict(kv=kv.store) if kv.store is not None else dict(k=kv.k, v=kv.v)
            out, _ = ring_attend(q, **kv_args, scale=block.scale, seq_len=self.T, align=self.align,
                                 group=self.world.group, **whole_attention_args(block))
            self.x = torch.cat([block.finish(x[s:s + chunk], out[:, :, s:s + chunk].to(x.dtype))
                                for s in range(0, x.shape[0], chunk)]) if x.shape[0] else x
        except BaseException:
            kv.close()
            raise
        self.watch.see(layer + 1, self.x)
        return kv

    def _attend_context(self, block, kv: RingKV):
        return lambda pairs: merge_across_ranks(self.world, [context_part(block, kv, q, s) for q, s in pairs])

    def tails(self, block, kv: RingKV, xs, q_starts, own=None, own_start=None):
        """tail_step over every rank's share of this layer's K/V -> (new xs, each tail's K/V)."""
        return tail_step(block, self._attend_context(block, kv), xs, q_starts, own, own_start)

    def done_with(self, kv: RingKV) -> None:
        pass

    def keep(self, block, kv: RingKV) -> RingKV:
        return keep_for_decode(block, kv, self.T, self.settings)

    def decode_step(self, layer: int, block, kv: RingKV, x_TD: torch.Tensor, pos: int) -> torch.Tensor:
        """One decoded token (replicated) through one block: it sees the sharded prompt and the tokens
        decoded before it."""
        own = None if self._own[layer] is None else [self._own[layer]]
        (x_TD,), (self._own[layer],) = self.tails(block, kv, [x_TD], [pos], own=own, own_start=self.T)
        return x_TD

    def head(self, all_logits: bool):
        """-> (logits [T, V] float32 on the CPU or None, the last prompt token's [V]), on every rank."""
        x, model = self.x, self.model
        if all_logits:
            logits = model.head(x).float() if x.shape[0] else x.new_empty(0, model.config.vocab_size).float()
            logits = (gather(logits, self.T, dim=0, align=self.align, group=self.world.group)
                      if self.world.size > 1 else logits).cpu()
            return logits, logits[-1]
        return None, model.head(_last_hidden(self.world, x, self.T, self.align, self.device)).float()[0].cpu()

    def close(self) -> None:
        self.x = None
