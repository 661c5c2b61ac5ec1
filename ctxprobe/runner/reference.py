"""The slow references the runner is checked against: the plain full forward of every tier, and
teacher-forced scores read from it (one forward of context + question + answer per branch)."""

from __future__ import annotations

import torch

from ctxprobe.runner.score import BranchScore, _check, read_answer
from ctxprobe.runner.weights import LayerWeights


@torch.inference_mode()
def logits(model, token_ids) -> torch.Tensor:
    """model.logits with block weights in any tier (host or disk ones come in one layer at a
    time): token ids [T] -> float32 logits [T, V]."""
    weights = LayerWeights(model.blocks, model.device)
    if not weights.active:   # every block on the device already: the model's own plain forward
        return model.logits(token_ids)
    return model.logits(token_ids, weights=weights)


def score_reference(model, context_ids, branches) -> list[BranchScore]:
    """The slow reference: one plain full forward (`logits`) of context + question + answer per branch."""
    branches = [(list(q), list(a)) for q, a in branches]
    _check(context_ids, branches)
    results = []
    for q, a in branches:
        ids = list(context_ids) + q + a
        logits_TV = logits(model, ids)
        first = len(context_ids) + len(q) - 1
        results.append(read_answer(logits_TV[first:first + len(a)].cpu(), a))
    return results
