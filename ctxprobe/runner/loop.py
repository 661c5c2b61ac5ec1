"""The layer loop: prefill (with branches riding behind the prompt), greedy generation, and decoding
on from a scored pass's K/V. One skeleton over a context-K/V strategy (ctxprobe/runner/context/):

    embed the prompt (and the riders)
    for each block l:                         (weights of l+1 fetched while l computes)
        KV_l   = the prompt through block l   (local: chunk by chunk; ring: this rank's share)
        riders = tail tokens through block l, each seeing KV_l and itself only
        KV_l is kept (generation) or freed
    head: the last prompt token's logits (or all of them) and each rider's
    decode: each new token is a tail through every block, against the kept KV_l

`ring=None` runs on this process (LocalContext); `ring=world` shards the prompt over the ranks of
a torchrun World (RingContext), and every rank returns the same result.

NaN or inf in the logits (a poisoned checkpoint, an overflow in a low-precision dtype) is
never a result: the loop raises NonFiniteLogits naming where the hidden states first went bad.
Each layer's output is checked on the device into a flag (no synchronisation while it runs);
the flags are read once, only when the logits are not finite.

Shapes: T tokens, D hidden, V vocab, L layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ctxprobe.errors import UserError
from ctxprobe.pass_progress import layer_done
from ctxprobe.runner.context.local import LocalContext
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
    kv: list | None = None                           # per layer (LocalKV or RingKV), when kept
    rider_kv: list | None = None                     # per layer, per rider (k, v), when kept
    context: object = None                           # the strategy that holds `kv`, when kept
    bytes_moved: int = 0                             # host/disk <-> device traffic (hidden states, KV, weights)

    def close(self) -> None:
        """Free the kept K/V (a disk tier's files are deleted)."""
        for kv in self.kv or ():
            kv.close()
        self.kv = self.rider_kv = None


def _ids(ids, device) -> torch.Tensor:
    return torch.as_tensor(list(ids) if not torch.is_tensor(ids) else ids, dtype=torch.long, device=device)


def _context(model, ids, settings: Settings, watch, ring):
    if ring is None:
        return LocalContext(model, ids, settings, watch)
    from ctxprobe.runner.context.ring import RingContext

    return RingContext(model, ids, settings, watch, ring)


@torch.no_grad()
def prefill(model, ids, *, settings: Settings | None = None, riders=(), keep_kv: bool = False,
            all_logits: bool = False, ring=None) -> Prefilled:
    """Run the prompt `ids` layer by layer; riders are token lists placed after it, one per branch.
    keep_kv: every layer's K/V (and the riders') stays for decoding; the caller closes it
    (`Prefilled.close`). ring: a World to shard the prompt over (None: this process)."""
    T = len(ids)
    if T == 0:
        raise UserError("the prompt is empty: prefill needs at least one token")
    if any(len(r) == 0 for r in riders):
        raise UserError("a branch has no tokens: give each branch at least one question or answer token")
    if settings is None:   # on a ring: K/V on the device, chunks of 4096 (a rank's plan comes from RunPlanner)
        settings = Settings() if ring is not None else auto_settings(
            model, T, keep_kv=keep_kv, extra_tokens=max((len(r) for r in riders), default=0))
    settings.check(len(model.blocks))
    device = torch.device(model.device)
    watch = FiniteWatch(len(model.blocks), device)
    ctx = _context(model, ids, settings, watch, ring)
    weights = LayerWeights(model.blocks, device)
    kept, rider_kv, kv = [], [], None
    try:
        ctx.embed()
        rider_x = [model.embed(_ids(r, device)) for r in riders]
        for x in rider_x:
            watch.see(0, x)
        layer_done(0, len(model.blocks), T)    # a long pass shows its layers (ctxprobe/pass_progress.py)
        for layer, block in enumerate(model.blocks):
            weights.enter(layer)     # this layer's weights on the device; the next one's on their way
            kv = ctx.prompt_layer(layer, block)
            if rider_x:
                rider_x, tails = ctx.tails(block, kv, rider_x, [T] * len(rider_x))
                for x in rider_x:
                    watch.see(layer + 1, x)
                if keep_kv:
                    rider_kv.append(tails)
            weights.leave(layer)
            ctx.done_with(kv)
            if keep_kv:
                kept.append(ctx.keep(block, kv))
            else:
                kv.close()
            kv = None
            layer_done(layer + 1, len(model.blocks), T)
        logits, last = ctx.head(all_logits)
        out = Prefilled(length=T, last_logits=last, logits=logits, kv=kept if keep_kv else None,
                        rider_kv=rider_kv if keep_kv else None, context=ctx if keep_kv else None)
        out.rider_logits = [model.head(x).float().cpu() for x in rider_x]
        out.bytes_moved = ctx.bytes_moved + weights.bytes_moved
        watch.check(out.logits if all_logits else out.last_logits, *out.rider_logits)
    except BaseException:
        # A failed run (out of memory at some length, say) must leave the model as it found it and
        # no offload files behind, so that a sweep or benchmark can go on with the next cell.
        for layer_kv in kept + ([kv] if kv is not None else []):
            layer_kv.close()
        raise
    finally:
        weights.restore()
        ctx.close()
    return out


def _greedy(model, first: int, max_new_tokens: int, stop: set, step) -> list[int]:
    """Greedy decoding after `first`: step(layer, block, x [1, D], i) runs the i-th token after `first`
    through one block."""
    device = torch.device(model.device)
    out = [first]
    weights = LayerWeights(model.blocks, device)
    try:
        for i in range(max_new_tokens - 1):   # the i-th token after `first`
            if out[-1] in stop:
                break
            x = model.embed(torch.tensor([out[-1]], device=device))
            watch = FiniteWatch(len(model.blocks), device)   # NaN would decode as token 0
            watch.see(0, x)
            for layer, block in enumerate(model.blocks):
                weights.enter(layer)
                x = step(layer, block, x, i)
                watch.see(layer + 1, x)
                weights.leave(layer)
            logits = model.head(x)[-1]
            watch.check(logits)
            out.append(int(logits.argmax()))
    finally:
        weights.restore()
    return out


@torch.no_grad()
def generate(model, prompt_ids, max_new_tokens: int, stop_ids=None, *, settings: Settings | None = None,
             ring=None) -> list[int]:
    """Greedy continuation of prompt_ids: up to max_new_tokens ids, stopping after any of stop_ids.
    Each decoded token's K/V joins the prompt's (kept per layer in the tier the plan chose)."""
    if max_new_tokens <= 0:
        return []
    if settings is None and ring is None:
        settings = auto_settings(model, len(prompt_ids), keep_kv=True, extra_tokens=max_new_tokens)
    done = prefill(model, prompt_ids, settings=settings, keep_kv=max_new_tokens > 1, ring=ring)
    try:
        T, kv = len(prompt_ids), done.kv
        return _greedy(model, int(done.last_logits.argmax()), max_new_tokens, set(stop_ids or ()),
                       lambda layer, block, x, i: done.context.decode_step(layer, block, kv[layer], x, T + i))
    finally:
        done.close()


@torch.no_grad()
def continue_rider(model, done: Prefilled, rider: int | None, kept_tokens: int, first: int,
                   max_new_tokens: int, stop_ids=None) -> list[int]:
    """Greedy decoding on from a pass that kept its K/V: the prompt, then the first `kept_tokens` tokens
    of rider `rider` (None: no rider), then `first` and what follows it, up to max_new_tokens ids.
    The prompt is not run again, and its K/V is left as it was (other riders may go on from it)."""
    T, ctx = done.length, done.context
    own = [None if rider is None else tuple(t.narrow(2, 0, kept_tokens) for t in done.rider_kv[layer][rider])
           for layer in range(len(model.blocks))]

    def step(layer, block, x, i):
        (x,), (own[layer],) = ctx.tails(block, done.kv[layer], [x], [T + kept_tokens + i], own=[own[layer]],
                                        own_start=T)
        return x
    return _greedy(model, first, max_new_tokens, set(stop_ids or ()), step)
