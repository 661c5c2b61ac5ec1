"""Sequence-parallel prefill and decode: one prompt sharded across the ranks of a World.

    rank r holds the prompt positions shard_positions(T, r, W) (zigzag; aligned to the model's
    local-attention chunk when the prompt is long enough, so chunked layers need no KV from
    other ranks), and for each block l:
        q, k, v = block.qkv(x_shard, positions)             (in token chunks)
        out     = ring_attend(q, k, v, ...)                 exact attention over the whole prompt
        riders  = tail tokens (branches, decoded tokens), replicated on every rank: their queries
                  attend to this rank's K/V shard, the partial (out, lse) of every rank is
                  all-gathered and merged in rank order, then merged with their own K/V
        x_shard = block.finish(x_shard, out)

Where things live on a rank (Settings, the same on every rank): this rank's share of layer l's K/V
in settings.kv_tier(l): "device" (tensors), or a KVStore in "host" memory or on "disk" (a file in
settings.offload_dir), which ring_attend(q, kv=store) and the riders stream block by block. The
shard's hidden states, queries and attention output stay on the device (T/W tokens each).

Every rank ends with the same last-token logits, rider logits and generated tokens, so callers
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
from ctxprobe.attention.shard import chunk_align
from ctxprobe.attention.masks import Rules, block_visible, visible_key_range
from ctxprobe.attention.ring import ring_attend
from ctxprobe.attention.ring_tiers import local_pieces
from ctxprobe.errors import UserError
from ctxprobe.pass_progress import layer_done
from ctxprobe.runner.distributed import World
from ctxprobe.runner.memory import Settings
from ctxprobe.runner.prefill import Prefilled
from ctxprobe.runner.weights import LayerWeights

DEFAULT_CHUNK_TOKENS = 4096


@dataclass
class ShardKV:
    """One layer's K/V for this rank's share of the prompt: k/v [1, Hkv, Ts, Dh] on the device,
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


def check_tiers(settings: Settings, n_layers: int) -> None:
    """Refuse bad tiers before any work, on every rank alike (settings are the same everywhere),
    rather than on one rank in the middle of a collective."""
    if not isinstance(settings.kv_tiers, str) and len(settings.kv_tiers) != n_layers:
        raise UserError(f"settings give KV tiers for {len(settings.kv_tiers)} layers but the model has "
                        f"{n_layers}: plan for this model, or give one tier for every layer")
    for layer in range(n_layers):
        tier = settings.kv_tier(layer)
        if tier not in attention.TIERS:
            raise UserError(f"unknown KV tier {tier!r} for layer {layer}; choose one of {', '.join(attention.TIERS)}")
        if tier == "disk" and settings.offload_dir is None:
            raise UserError("the disk KV tier needs an offload directory: pass --offload-dir")


def shard_align(model, seq_len: int, world_size: int) -> int:
    """Align shards to the local-attention chunk (Llama 4: 8192) when every zigzag piece can
    hold at least one whole chunk; shorter prompts split finer (ring_attend is exact either way)."""
    return chunk_align([b.mask.get("chunk_size") for b in model.blocks], seq_len, world_size)


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
        store.append(k, v)
        qs.append(q)
    return qs[0] if len(qs) == 1 else torch.cat(qs, dim=2)


def _new_store(block, tier: str, settings: Settings, dtype, device) -> attention.KVStore:
    return attention.KVStore(block.n_kv_heads, block.head_dim, tier=tier, block_size=settings.kv_block_tokens,
                             dtype=dtype, device=device, path=settings.offload_dir)


def _layer_kv(block, layer: int, x_TD, pos_T, chunk: int, settings: Settings | None, ranges, dtype):
    """This rank's q [1, Hq, Ts, Dh] and K/V share (ShardKV) for one layer, in the layer's tier."""
    tier = settings.kv_tier(layer) if settings is not None else "device"
    if tier == "device":
        q, k, v = _qkv_in_chunks(block, x_TD, pos_T, chunk)
        return q, ShardKV(ranges, k, v)
    kv = ShardKV(ranges, store=_new_store(block, tier, settings, dtype, x_TD.device))
    try:
        return _qkv_into_store(block, x_TD, pos_T, chunk, kv.store), kv
    except BaseException:
        kv.close()
        raise


def keep_for_decode(block, kv: ShardKV, seq_len: int, settings: Settings | None) -> ShardKV:
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
        return ShardKV(ranges, k.clone(), v.clone())
    old = kv.store
    trimmed = ShardKV(ranges, store=_new_store(block, old.tier, settings, old.dtype, old.device))
    try:
        wanted = [(at, at + e - s) for s, e, at in kept]     # shard-local [lo, hi), in order
        blocks = [i for i in range(old.n_blocks)
                  if any(lo < old.block_range(i)[1] and old.block_range(i)[0] < hi for lo, hi in wanted)]
        for start, k, v in attention.BlockStream(old, blocks, "cpu"):    # host or disk: views, no copy
            end = start + k.shape[2]
            for lo, hi in wanted:
                a, b = max(lo, start), min(hi, end)
                if a < b:
                    trimmed.store.append(k.narrow(2, a - start, b - a), v.narrow(2, a - start, b - a))
    except BaseException:
        trimmed.close()
        raise
    kv.close()
    return trimmed


def _empty_part(q_1HTD: torch.Tensor):
    B, H, T, D = q_1HTD.shape
    return (q_1HTD.new_zeros(B, H, T, D, dtype=torch.float32),
            torch.full((B, H, T), float("-inf"), dtype=torch.float32, device=q_1HTD.device))


def context_part(block, kv: ShardKV, q_1HTD: torch.Tensor, q_start: int):
    """Queries at [q_start, q_start + Tb) over this rank's pieces of the prompt -> (out, lse) fp32."""
    if kv.store is not None:
        return _store_part(block, kv, q_1HTD, q_start)
    acc = _empty_part(q_1HTD)
    offset, q_range = 0, (q_start, q_start + q_1HTD.shape[2])
    for s, e in kv.ranges:
        if block_visible(q_range, (s, e), **block.mask):
            out, lse = attention.attend(q_1HTD, kv.k.narrow(2, offset, e - s), kv.v.narrow(2, offset, e - s),
                                        scale=block.scale, q_start=q_start, k_start=s, **block.mask)
            acc = attention.merge(*acc, out, lse)
        offset += e - s
    return acc


def _store_part(block, kv: ShardKV, q_1HTD: torch.Tensor, q_start: int):
    """context_part over a store: the blocks holding some visible key stream onto the device
    (BlockStream, next block copied while this one computes); a block that straddles the two
    zigzag pieces is attended part by part, each with its absolute k_start."""
    acc = _empty_part(q_1HTD)
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
    """Each rank's partial (out, lse) per rider -> the merged result, identical on every rank.

    All riders travel in one all_gather (one flat float32 buffer per rank); the merge runs in
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


def tail_step(block, kv: ShardKV, world: World, xs: list[torch.Tensor], q_starts: list[int],
              own: list[tuple[torch.Tensor, torch.Tensor]] | None = None, own_start: int | None = None):
    """Replicated tail tokens through one block. xs[i] [Tb, D] sits at [q_starts[i], +Tb) and
    sees the prompt (sharded K/V) and its own tail's K/V: by default its own tokens; for decode,
    `own[i]` = (k, v) of every earlier tail token, which this step's K/V joins (from own_start).
    -> (new xs, the tails' K/V)."""
    qkv = [block.qkv(x, torch.arange(s, s + x.shape[0], device=x.device)) for x, s in zip(xs, q_starts)]
    local = block.mask.get("chunk_size") is not None or block.mask.get("window") is not None
    if len(xs) > 1 and not local and len(set(q_starts)) == 1:
        # Every prompt key is visible to every rider query (all sit after the prompt): one pass over
        # the K/V share for all riders (one stream of a host or disk store instead of one per rider).
        sizes = [x.shape[0] for x in xs]
        out_all, lse_all = context_part(block, kv, torch.cat([q for q, _, _ in qkv], dim=2), q_starts[0])
        (out_all, lse_all), = merge_across_ranks(world, [(out_all, lse_all)])
        ctx = list(zip(out_all.split(sizes, dim=2), lse_all.split(sizes, dim=2)))
    else:
        ctx = merge_across_ranks(world, [context_part(block, kv, q, s) for (q, _, _), s in zip(qkv, q_starts)])
    out, tails = [], []
    for i, (x, (q, k, v), (ctx_out, ctx_lse)) in enumerate(zip(xs, qkv, ctx)):
        if own is not None:
            k, v = torch.cat([own[i][0], k], dim=2), torch.cat([own[i][1], v], dim=2)
        k_start = own_start if own is not None else q_starts[i]
        own_out, own_lse = attention.attend(q, k, v, scale=block.scale, q_start=q_starts[i], k_start=k_start,
                                            **block.mask)
        merged, _ = attention.merge(ctx_out, ctx_lse, own_out, own_lse)
        out.append(block.finish(x, merged.to(x.dtype)))
        tails.append((k, v))
    return out, tails


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


@torch.no_grad()
def sharded_prefill(model, ids, world: World, *, settings: Settings | None = None, riders=(), keep_kv: bool = False,
                    all_logits: bool = False, chunk_tokens: int | None = None) -> Prefilled:
    """`prefill` with the prompt sharded over `world`; the same Prefilled (kv: ShardKV per layer) on every rank.

    settings: each layer's K/V tier, the offload directory, the token chunk (None: K/V on the
    device, chunks of DEFAULT_CHUNK_TOKENS); chunk_tokens, when given, overrides the chunk.
    With keep_kv the caller closes every layer's ShardKV (sharded_generate does).
    """
    T = len(ids)
    if T == 0:
        raise UserError("the prompt is empty: prefill needs at least one token")
    if any(len(r) == 0 for r in riders):
        raise UserError("a branch has no tokens: give each branch at least one question or answer token")
    if settings is not None:
        check_tiers(settings, len(model.blocks))
    device, dtype = torch.device(model.device), model.dtype
    chunk = chunk_tokens or (settings.chunk_tokens if settings is not None else DEFAULT_CHUNK_TOKENS)
    align = shard_align(model, T, world.size)
    ranges = shard_ranges(T, world.rank, world.size, align=align)
    pos_T = shard_positions(T, world.rank, world.size, align=align)
    ids_T = torch.as_tensor(list(ids) if not torch.is_tensor(ids) else ids, dtype=torch.long)
    x = model.embed(ids_T[pos_T].to(device))
    pos_T = pos_T.to(device)
    rider_x = [model.embed(torch.as_tensor(list(r), dtype=torch.long, device=device)) for r in riders]
    weights, kept, kv = LayerWeights(model.blocks, device), [], None
    try:
        layer_done(0, len(model.blocks), T)   # rank 0's sweep bar shows the layers of a long pass
        for layer, block in enumerate(model.blocks):
            weights.enter(layer)
            q, kv = _layer_kv(block, layer, x, pos_T, chunk, settings, ranges, dtype)
            kv_args = dict(kv=kv.store) if kv.store is not None else dict(k=kv.k, v=kv.v)
            out, _ = ring_attend(q, **kv_args, scale=block.scale, seq_len=T, align=align, group=world.group,
                                 **block.mask)
            if rider_x:
                rider_x, _ = tail_step(block, kv, world, rider_x, [T] * len(rider_x))
            x = torch.cat([block.finish(x[s:s + chunk], out[:, :, s:s + chunk].to(x.dtype))
                           for s in range(0, x.shape[0], chunk)]) if x.shape[0] else x
            weights.leave(layer)
            if keep_kv:
                kept.append(keep_for_decode(block, kv, T, settings))
            else:
                kv.close()
            kv = None
            del q, out
            layer_done(layer + 1, len(model.blocks), T)
        done = Prefilled(length=T, kv=kept if keep_kv else None)
        if all_logits:
            logits = model.head(x).float() if x.shape[0] else x.new_empty(0, model.config.vocab_size).float()
            done.logits = (gather(logits, T, dim=0, align=align, group=world.group)
                           if world.size > 1 else logits).cpu()
            done.last_logits = done.logits[-1]
        else:
            done.last_logits = model.head(_last_hidden(world, x, T, align, device)).float()[0].cpu()
        done.rider_logits = [model.head(r).float().cpu() for r in rider_x]
    except BaseException:
        # A failed pass (this rank's, or a peer's seen as a collective error) leaves no offload files.
        for layer_kv in kept + ([kv] if kv is not None else []):
            layer_kv.close()
        raise
    finally:
        weights.restore()   # a failed run leaves every block on its host copy
    return done


@torch.no_grad()
def sharded_generate(model, prompt_ids, max_new_tokens: int, stop_ids, world: World, *,
                     settings: Settings | None = None, chunk_tokens: int | None = None) -> list[int]:
    """Greedy continuation with the prompt's K/V left sharded (each layer's share in its tier):
    each new token is a replicated tail that attends to every rank's shard (merged) and to the
    tokens decoded before it. The shares are freed (disk files deleted) before returning."""
    if max_new_tokens <= 0:
        return []
    stop = set(stop_ids or ())
    T = len(prompt_ids)
    done = sharded_prefill(model, prompt_ids, world, settings=settings, keep_kv=max_new_tokens > 1,
                           chunk_tokens=chunk_tokens)
    device = torch.device(model.device)
    out = [int(done.last_logits.argmax())]
    tails = [None] * len(model.blocks)     # per layer: (k, v) [1, Hkv, decoded, Dh] of the decoded tokens
    weights = LayerWeights(model.blocks, device)
    try:
        while len(out) < max_new_tokens and out[-1] not in stop:
            pos = T + len(out) - 1
            x = model.embed(torch.tensor([out[-1]], device=device))
            for layer, (block, kv) in enumerate(zip(model.blocks, done.kv)):
                weights.enter(layer)
                own = None if tails[layer] is None else [tails[layer]]
                (x,), (tails[layer],) = tail_step(block, kv, world, [x], [pos], own=own, own_start=T)
                weights.leave(layer)
            out.append(int(model.head(x)[-1].argmax()))
    finally:
        weights.restore()   # a failed run leaves every block on its host copy
        for kv in done.kv or ():
            kv.close()
    return out
