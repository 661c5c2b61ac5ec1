"""Attention sinks: a learned per-head logit that joins the softmax denominator as one more
key whose value is zero (gpt-oss). Shapes: Hq query heads, T queries, Dv value head dim.

Softmax over [scores, sink] with the sink's column dropped is, per row,
    out' = out * exp(lse) / (exp(lse) + exp(sink)) = out * sigmoid(lse - sink)
    lse' = logaddexp(lse, sink)
where (out, lse) is plain attention over the row's keys. The sink is one term of the denominator,
not a key of any block, so partial results over key blocks, chunks or ranks merge as usual and
the sink is applied exactly once, to the merged result; applied per part it would be counted
once per part. A row that sees no key (lse -inf) gets out 0 and lse = sink.
"""

from __future__ import annotations

import torch


def check_sinks(sinks, n_heads: int) -> None:
    if sinks is None:
        return
    if not isinstance(sinks, torch.Tensor) or not sinks.is_floating_point() or sinks.dim() != 1 \
            or sinks.shape[0] != n_heads:
        got = tuple(sinks.shape) if isinstance(sinks, torch.Tensor) else type(sinks).__name__
        raise ValueError(f"sinks must be a float tensor [Hq] = [{n_heads}] (one logit per query head), "
                         f"got {got}")


def apply_sinks(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor):
    """out [B, Hq, T, Dv], lse [B, Hq, T] (merged over all keys), sinks [Hq]
    -> (out in out's dtype, lse float32) with the sinks in the denominator. Apply once per row."""
    check_sinks(sinks, out.shape[1])
    sink = sinks.to(device=lse.device, dtype=torch.float32).view(1, -1, 1)
    lse = lse.float()
    empty = torch.isneginf(lse)
    # An empty row has weight 0 whatever the sink (a sink of -inf would make -inf - -inf = nan).
    weight = torch.where(empty, torch.zeros_like(lse), torch.sigmoid(lse - sink))
    new_lse = torch.where(empty, sink.expand_as(lse), torch.logaddexp(lse, sink))
    return (out.float() * weight.unsqueeze(-1)).to(out.dtype), new_lse
