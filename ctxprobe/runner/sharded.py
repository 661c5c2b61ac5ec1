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

import attention
from attention import gather, shard_positions, shard_ranges
from attention.ring import block_visible, ring_attend
from ctxprobe.errors import UserError
from ctxprobe.runner.distributed import World
from ctxprobe.runner.prefill import Prefilled, model_device
from ctxprobe.runner.weights import LayerWeights

DEFAULT_CHUNK_TOKENS = 4096


@dataclass
class ShardKV:
    """One layer's K/V for this rank's share of the prompt; k/v [1, Hkv, Ts, Dh]."""
    k: torch.Tensor
    v: torch.Tensor
    ranges: list[tuple[int, int]]      # absolute [start, end) of the pieces, in k/v order


def shard_align(model, seq_len: int, world_size: int) -> int:
    """Align shards to the local-attention chunk (Llama 4: 8192) when every zigzag piece can
    hold at least one whole chunk; shorter prompts split finer (ring_attend is exact either way)."""
    chunks = {b.mask.get("chunk_size") for b in model.blocks} - {None}
    if len(chunks) == 1:
        c = chunks.pop()
        if seq_len >= 2 * world_size * c:
            return c
    return 1


def _qkv_in_chunks(block, x_TD: torch.Tensor, pos_T: torch.Tensor, chunk: int):
    """block.qkv over token chunks of the shard (bounds activation memory) -> q, k, v [1, H, Ts, Dh]."""
    if x_TD.shape[0] <= chunk:
        return block.qkv(x_TD, pos_T)
    parts = [block.qkv(x_TD[s:s + chunk], pos_T[s:s + chunk]) for s in range(0, x_TD.shape[0], chunk)]
    return tuple(torch.cat(p, dim=2) for p in zip(*parts))


def _empty_part(q_1HTD: torch.Tensor):
    B, H, T, D = q_1HTD.shape
    return (q_1HTD.new_zeros(B, H, T, D, dtype=torch.float32),
            torch.full((B, H, T), float("-inf"), dtype=torch.float32, device=q_1HTD.device))


def context_part(block, kv: ShardKV, q_1HTD: torch.Tensor, q_start: int):
    """Queries at [q_start, q_start + Tb) over this rank's pieces of the prompt -> (out, lse) fp32."""
    acc = _empty_part(q_1HTD)
    offset, q_range = 0, (q_start, q_start + q_1HTD.shape[2])
    for s, e in kv.ranges:
        if block_visible(q_range, (s, e), **block.mask):
            out, lse = attention.attend(q_1HTD, kv.k.narrow(2, offset, e - s), kv.v.narrow(2, offset, e - s),
                                        scale=block.scale, q_start=q_start, k_start=s, **block.mask)
            acc = attention.merge(*acc, out, lse)
        offset += e - s
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
def sharded_prefill(model, ids, world: World, *, riders=(), keep_kv: bool = False, all_logits: bool = False,
                    chunk_tokens: int | None = None) -> Prefilled:
    """`prefill` with the prompt sharded over `world`; the same Prefilled (kv: ShardKV per layer) on every rank."""
    T = len(ids)
    if T == 0:
        raise UserError("the prompt is empty: prefill needs at least one token")
    if any(len(r) == 0 for r in riders):
        raise UserError("a branch has no tokens: give each branch at least one question or answer token")
    device = model_device(model)
    chunk = chunk_tokens or DEFAULT_CHUNK_TOKENS
    align = shard_align(model, T, world.size)
    ranges = shard_ranges(T, world.rank, world.size, align=align)
    pos_T = shard_positions(T, world.rank, world.size, align=align)
    ids_T = torch.as_tensor(list(ids) if not torch.is_tensor(ids) else ids, dtype=torch.long)
    x = model.embed(ids_T[pos_T].to(device))
    pos_T = pos_T.to(device)
    rider_x = [model.embed(torch.as_tensor(list(r), dtype=torch.long, device=device)) for r in riders]
    weights, kept = LayerWeights(model.blocks, device), []
    try:
        for layer, block in enumerate(model.blocks):
            weights.enter(layer)
            q, k, v = _qkv_in_chunks(block, x, pos_T, chunk)
            out, _ = ring_attend(q, k, v, scale=block.scale, seq_len=T, align=align, group=world.group,
                                 **block.mask)
            kv = ShardKV(k, v, ranges)
            if rider_x:
                rider_x, _ = tail_step(block, kv, world, rider_x, [T] * len(rider_x))
            x = torch.cat([block.finish(x[s:s + chunk], out[:, :, s:s + chunk].to(x.dtype))
                           for s in range(0, x.shape[0], chunk)]) if x.shape[0] else x
            weights.leave(layer)
            if keep_kv:
                kept.append(kv)
            del q, out
    finally:
        weights.restore()   # a failed run leaves every block on its host copy
    done = Prefilled(length=T, kv=kept if keep_kv else None)
    if all_logits:
        logits = model.head(x).float() if x.shape[0] else x.new_empty(0, model.config.vocab_size).float()
        done.logits = (gather(logits, T, dim=0, align=align, group=world.group) if world.size > 1 else logits).cpu()
        done.last_logits = done.logits[-1]
    else:
        done.last_logits = model.head(_last_hidden(world, x, T, align, device)).float()[0].cpu()
    done.rider_logits = [model.head(r).float().cpu() for r in rider_x]
    return done


@torch.no_grad()
def sharded_generate(model, prompt_ids, max_new_tokens: int, stop_ids, world: World,
                     chunk_tokens: int | None = None) -> list[int]:
    """Greedy continuation with the prompt's K/V left sharded: each new token is a replicated
    tail that attends to every rank's shard (merged) and to the tokens decoded before it."""
    if max_new_tokens <= 0:
        return []
    stop = set(stop_ids or ())
    T = len(prompt_ids)
    done = sharded_prefill(model, prompt_ids, world, keep_kv=max_new_tokens > 1, chunk_tokens=chunk_tokens)
    device = model_device(model)
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
    return out
