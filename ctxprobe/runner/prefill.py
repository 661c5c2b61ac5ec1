"""Layer-by-layer prefill: one layer at a time over the whole prompt, in token chunks.

    for each block l:                         (weights of l+1 fetched while l computes)
        for each chunk [s, e) of the prompt:  (chunk i+1 copied in while chunk i computes)
            q, k, v = block.qkv(x[s:e], pos)
            KV_l.append(k, v)                 (chunked-local / window layers drop what no later query sees)
            x[s:e] = block.finish(x[s:e], attend(q, KV_l))
        riders (branch tokens after the prompt) take layer l too, seeing KV_l and themselves only
        KV_l is freed, unless kept for generation

Only one layer's KV and one chunk's activations are live on the device; the hidden states of
all T tokens wait in a HiddenBuffer (host or disk). Shapes: T tokens, D hidden, V vocab, L layers.

NaN or inf in the logits (a poisoned checkpoint, an overflow in a low-precision dtype) is
never a result: prefill raises NonFiniteLogits naming where the hidden states first went bad.
Each layer's output is checked on the device into a flag (no synchronisation while it runs);
the flags are read once, only when the logits are not finite.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ctxprobe import attention
from ctxprobe.errors import UserError
from ctxprobe.pass_progress import layer_done
from ctxprobe.runner.hidden import HiddenBuffer
from ctxprobe.runner.kv import LayerKV
from ctxprobe.runner.memory import Settings, auto_settings
from ctxprobe.runner.weights import LayerWeights


class NonFiniteLogits(RuntimeError):
    """The logits hold NaN or inf: the cell is errored with this message, never scored."""


class FiniteWatch:
    """Per-stage flags on the device: stage 0 the embeddings, stage l + 1 the output of layer l.
    `see` costs one elementwise pass and no host synchronisation."""

    def __init__(self, n_layers: int, device):
        self.bad_S = torch.zeros(n_layers + 1, dtype=torch.bool, device=device)

    def see(self, stage: int, x: torch.Tensor) -> None:
        self.bad_S[stage] |= ~torch.isfinite(x).all()

    def check(self, *logits: torch.Tensor) -> None:
        """Raise NonFiniteLogits when any of these logits is not finite."""
        if all(bool(torch.isfinite(x).all()) for x in logits):
            return
        bad = self.bad_S.nonzero().flatten().tolist()
        if not bad:
            where = "the final norm or output head (every layer's hidden states were finite)"
        elif bad[0] == 0:
            where = "the token embeddings"
        else:
            where = f"layer {bad[0] - 1}"
        raise NonFiniteLogits(f"non-finite logits in {where}: NaN or inf from the checkpoint's "
                              "weights or an overflow in this dtype; the cell is not scored")


@dataclass
class Prefilled:
    length: int
    last_logits: torch.Tensor | None = None          # [V] float32, prediction after the last prompt token
    logits: torch.Tensor | None = None               # [T, V] float32 when asked for all
    rider_logits: list[torch.Tensor] = field(default_factory=list)   # per rider [Tb, V] float32
    kv: list[LayerKV] | None = None                  # per layer, when kept for generation
    bytes_moved: int = 0                             # host/disk <-> device traffic (hidden states + KV)


def new_layer_kv(block, settings: Settings, layer: int, device, dtype) -> LayerKV:
    return LayerKV(tier=settings.kv_tier(layer), device=device, dtype=dtype, n_kv_heads=block.n_kv_heads,
                   head_dim=block.head_dim, block_tokens=settings.kv_block_tokens, mask=block.mask,
                   scale=block.scale, offload_dir=settings.offload_dir)


def layer_step(block, kv: LayerKV, x_TD: torch.Tensor, start: int) -> torch.Tensor:
    """Tokens at [start, start + T) through one block; their K/V join kv."""
    pos_T = torch.arange(start, start + x_TD.shape[0], device=x_TD.device)
    q, k, v = block.qkv(x_TD, pos_T)
    kv.trim(start)
    kv.append(k, v)
    out, _ = kv.attend(q, start)
    return block.finish(x_TD, out.to(x_TD.dtype))


def riders_step(block, kv: LayerKV, xs: list[torch.Tensor], start: int) -> list[torch.Tensor]:
    """Branch tokens, each at [start, start + T_b), through one block: each sees kv and itself only.

    On global layers every context key is visible to every branch query, so all branches' queries
    go over the context KV in one pass (one stream of a host-tier KV instead of one per branch).
    """
    qkv = [block.qkv(x, torch.arange(start, start + x.shape[0], device=x.device)) for x in xs]
    local = block.mask.get("chunk_size") is not None or block.mask.get("window") is not None
    if len(xs) > 1 and not local:
        out_all, lse_all = kv.attend(torch.cat([q for q, _, _ in qkv], dim=2), start)
        sizes = [x.shape[0] for x in xs]
        ctx = list(zip(out_all.split(sizes, dim=2), lse_all.split(sizes, dim=2)))
    else:
        ctx = [kv.attend(q, start) for q, _, _ in qkv]
    out = []
    for x, (q, k, v), (out_ctx, lse_ctx) in zip(xs, qkv, ctx):
        out_own, lse_own = attention.attend(q, k, v, scale=block.scale, q_start=start, k_start=start,
                                            **block.mask)
        merged, _ = attention.merge(out_ctx, lse_ctx, out_own, lse_own)
        out.append(block.finish(x, merged.to(x.dtype)))
    return out


def _ids(ids, device) -> torch.Tensor:
    return torch.as_tensor(list(ids) if not torch.is_tensor(ids) else ids, dtype=torch.long, device=device)


@torch.no_grad()
def check_supported(model) -> None:
    """Refuse, by name, blocks whose attention this loop cannot run yet rather than give wrong logits:
    gpt-oss's sinks (not passed to attention here) and MLA's values narrower than its keys (the KV
    tiers hold one head dim). Their plain forward is Model.logits."""
    for block in model.blocks:
        if getattr(block, "sinks", None) is not None:
            need = "attention sinks"
        elif getattr(block, "v_head_dim", None) not in (None, getattr(block, "head_dim", None)):
            need = "a value head dim unlike the key's (multi-head latent attention)"
        else:
            continue
        raise UserError(f"{model.config.arch}: the streamed runner (prefill, score, generate, run) does not "
                        f"support {need} yet; use model.logits(ids) for its plain forward")


def prefill(model, ids, *, settings: Settings | None = None, riders=(), keep_kv: bool = False,
            all_logits: bool = False) -> Prefilled:
    """Run the prompt `ids` layer by layer; riders are token lists placed after it, one per branch."""
    check_supported(model)
    T = len(ids)
    if T == 0:
        raise UserError("the prompt is empty: prefill needs at least one token")
    if any(len(r) == 0 for r in riders):
        raise UserError("a branch has no tokens: give each branch at least one question or answer token")
    from ctxprobe.runner import distributed

    if distributed.active() is not None:  # under torchrun: the prompt is sharded over the ranks
        from ctxprobe.runner.sharded import sharded_prefill

        return sharded_prefill(model, ids, distributed.active(), settings=settings, riders=riders,
                               keep_kv=keep_kv, all_logits=all_logits)
    if settings is None:
        settings = auto_settings(model, T, keep_kv=keep_kv, extra_tokens=max((len(r) for r in riders), default=0))
    device, dtype = torch.device(model.device), model.dtype
    C = settings.chunk_tokens
    spans = [(s, min(s + C, T)) for s in range(0, T, C)]
    ids_T = _ids(ids, "cpu")

    hidden = HiddenBuffer(T, model.config.dim, dtype, tier=settings.hidden_tier, device=device,
                          offload_dir=settings.offload_dir)
    weights = LayerWeights(model.blocks, device)
    watch = FiniteWatch(len(model.blocks), device)
    kept, moved, kv = [], 0, None
    try:
        for s, e in spans:
            x = model.embed(ids_T[s:e].to(device))
            watch.see(0, x)
            hidden.write(s, x)
        rider_x = [model.embed(_ids(r, device)) for r in riders]
        for x in rider_x:
            watch.see(0, x)
        layer_done(0, len(model.blocks), T)    # a long pass shows its layers (ctxprobe/pass_progress.py)
        for layer, block in enumerate(model.blocks):
            weights.enter(layer)     # this layer's weights on the device; the next one's on their way
            kv = new_layer_kv(block, settings, layer, device, dtype)
            for i, (s, e) in enumerate(spans):
                x = hidden.read(s, e)
                if i + 1 < len(spans):
                    hidden.prefetch(*spans[i + 1])
                x = layer_step(block, kv, x, s)
                watch.see(layer + 1, x)
                hidden.write(s, x)
            rider_x = riders_step(block, kv, rider_x, T) if rider_x else rider_x
            for x in rider_x:
                watch.see(layer + 1, x)
            weights.leave(layer)
            moved += kv.bytes_moved
            if keep_kv:
                kept.append(kv)
            else:
                kv.close()
            kv = None
            layer_done(layer + 1, len(model.blocks), T)
        hidden.sync()

        out = Prefilled(length=T, kv=kept if keep_kv else None)
        if all_logits:
            out.logits = torch.cat([model.head(hidden.read(s, e)).float().cpu() for s, e in spans])
            out.last_logits = out.logits[-1]
        else:
            out.last_logits = model.head(hidden.read(T - 1, T)).float()[0].cpu()
        out.rider_logits = [model.head(x).float().cpu() for x in rider_x]
        out.bytes_moved = moved + hidden.bytes_moved + weights.bytes_moved
        watch.check(out.logits if all_logits else out.last_logits, *out.rider_logits)
    except BaseException:
        # A failed run (out of memory at some length, say) must leave the model as it found it and
        # no offload files behind, so that a sweep or benchmark can go on with the next cell.
        for layer_kv in kept + ([kv] if kv is not None else []):
            layer_kv.close()
        raise
    finally:
        weights.restore()
        hidden.close()
    return out
