"""What both K/V strategies share: a block's attention arguments and the tail step.

Tail tokens sit after the prompt: the branches of a scored pass (riders), and decoded tokens.
Each attends to the prompt's K/V (through the strategy's `attend_context`) and to its own
tail's K/V, and the two partial results merge (attention.merge, float32).

Shapes: Tb tail tokens, D hidden, Hq/Hkv heads, Dk/Dv head dims.
"""

from __future__ import annotations

import torch

from ctxprobe import attention


def kv_dims(block) -> dict:
    """The value head dim Dv (None: the key's, Dk) and whether V lives inside K (MLA's latent), as
    attention.KVStore takes them."""
    return dict(v_head_dim=getattr(block, "v_head_dim", None),
                values_in_keys=bool(getattr(block, "values_in_keys", False)))


def append_kv(store, k: torch.Tensor, v: torch.Tensor) -> None:
    """K and V into an attention.KVStore; with values_in_keys (MLA) V is K's leading columns, so
    K goes in alone."""
    store.append(k, None if store.values_in_keys else v)


def sinks_of(block):
    """The block's per-head sink logits [Hq] (gpt-oss), or None."""
    return getattr(block, "sinks", None)


def whole_attention_args(block) -> dict:
    """Keyword arguments of an attention call that sees every key a query may see (the prompt's own
    pass): the block's mask, and its sinks, which belong in the softmax denominator once. Calls
    whose partial results are merged afterwards take `block.mask` alone, and the merged result
    gets the sinks (`with_sinks`)."""
    sinks = sinks_of(block)
    return dict(block.mask) if sinks is None else dict(block.mask, sinks=sinks)


def with_sinks(block, out: torch.Tensor, lse: torch.Tensor):
    """A merged (out, lse) over every key, with the block's sinks applied once (none: as it is)."""
    sinks = sinks_of(block)
    if sinks is None:
        return out, lse
    return attention.apply_sinks(out.float(), lse, sinks)


def tail_step(block, attend_context, xs: list[torch.Tensor], q_starts: list[int],
              own: list[tuple[torch.Tensor, torch.Tensor]] | None = None, own_start: int | None = None):
    """Tail tokens through one block. xs[i] [Tb, D] sits at [q_starts[i], +Tb) and sees the prompt
    (attend_context(pairs of (q, q_start)) -> their (out, lse), in one go) and its own tail's K/V: by
    default its own tokens; for decoding, `own[i]` = (k, v) of every earlier tail token, which this
    step's K/V joins (the tail starts at own_start). -> (new xs, each tail's K/V)."""
    qkv = [block.qkv(x, torch.arange(s, s + x.shape[0], device=x.device)) for x, s in zip(xs, q_starts)]
    local = block.mask.get("chunk_size") is not None or block.mask.get("window") is not None
    if len(xs) > 1 and not local and len(set(q_starts)) == 1:
        # Every prompt key is visible to every tail query (all sit after the prompt): one pass over
        # the prompt's K/V for all tails (one stream of a host or disk store instead of one per tail).
        sizes = [x.shape[0] for x in xs]
        (out_all, lse_all), = attend_context([(torch.cat([q for q, _, _ in qkv], dim=2), q_starts[0])])
        ctx = list(zip(out_all.split(sizes, dim=2), lse_all.split(sizes, dim=2)))
    else:
        ctx = attend_context([(q, s) for (q, _, _), s in zip(qkv, q_starts)])
    out, tails = [], []
    for i, (x, (q, k, v), (ctx_out, ctx_lse)) in enumerate(zip(xs, qkv, ctx)):
        if own is not None and own[i] is not None:
            k, v = torch.cat([own[i][0], k], dim=2), torch.cat([own[i][1], v], dim=2)
        k_start = own_start if own is not None else q_starts[i]
        own_out, own_lse = attention.attend(q, k, v, scale=block.scale, q_start=q_starts[i], k_start=k_start,
                                            **block.mask)
        merged, _ = with_sinks(block, *attention.merge(ctx_out, ctx_lse, own_out, own_lse))
        out.append(block.finish(x, merged.to(x.dtype)))
        tails.append((k, v))
    return out, tails
