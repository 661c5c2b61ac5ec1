"""Greedy generation that reuses the prefill's KV (kept per layer in the tier the plan chose).

Decoding one token runs it through every block with `layer_step`, the same function the
prefill uses for a chunk, so decode and prefill cannot drift apart.
"""

from __future__ import annotations

import torch

from ctxprobe.runner.memory import Settings, auto_settings
from ctxprobe.runner.prefill import FiniteWatch, check_supported, layer_step, prefill
from ctxprobe.runner.weights import LayerWeights


@torch.no_grad()
def generate(model, prompt_ids, max_new_tokens: int, stop_ids=None, *,
             settings: Settings | None = None) -> list[int]:
    """Greedy continuation of prompt_ids: up to max_new_tokens ids, stopping after any of stop_ids."""
    check_supported(model)
    if max_new_tokens <= 0:
        return []
    stop = set(stop_ids or ())
    from ctxprobe.runner import distributed

    if distributed.active() is not None:  # under torchrun: the prompt's K/V stays sharded over the ranks
        from ctxprobe.runner.sharded import sharded_generate

        return sharded_generate(model, prompt_ids, max_new_tokens, stop, distributed.active(),
                                settings=settings)
    if settings is None:
        settings = auto_settings(model, len(prompt_ids), keep_kv=True, extra_tokens=max_new_tokens)
    done = prefill(model, prompt_ids, settings=settings, keep_kv=max_new_tokens > 1)
    device = torch.device(model.device)
    out = [int(done.last_logits.argmax())]
    weights = LayerWeights(model.blocks, device)
    pos = len(prompt_ids)
    try:
        while len(out) < max_new_tokens and out[-1] not in stop:
            x = model.embed(torch.tensor([out[-1]], device=device))
            watch = FiniteWatch(len(model.blocks), device)   # NaN would decode as token 0
            watch.see(0, x)
            for layer, (block, kv) in enumerate(zip(model.blocks, done.kv)):
                weights.enter(layer)
                x = layer_step(block, kv, x, pos)
                watch.see(layer + 1, x)
                weights.leave(layer)
            logits = model.head(x)[-1]
            watch.check(logits)
            out.append(int(logits.argmax()))
            pos += 1
    finally:
        weights.restore()
        for kv in done.kv or ():
            kv.close()
    return out
