"""The oracle: plain torch math in float32, masks built from absolute positions.

Shapes: B batch, Hq query heads, Hkv key/value heads, Tq queries, Tk keys, Dk query/key head
dim, Dv value head dim (may differ from Dk, e.g. DeepSeek-V3's multi-head latent attention).
Sinks (gpt-oss) are computed literally: a softmax over [scores, sink] whose sink column is dropped.
"""

from __future__ import annotations

import math

import torch


def visible(qpos: torch.Tensor, kpos: torch.Tensor, causal: bool, chunk_size: int | None,
            window: int | None) -> torch.Tensor:
    """[Tq, Tk] bool: may query at qpos attend to key at kpos."""
    qp, kp = qpos[:, None], kpos[None, :]
    ok = torch.ones(qp.shape[0], kp.shape[1], dtype=torch.bool, device=qpos.device)
    if causal:
        ok &= kp <= qp
    if chunk_size is not None:
        ok &= torch.div(kp, chunk_size, rounding_mode="floor") == torch.div(qp, chunk_size, rounding_mode="floor")
    if window is not None:
        ok &= (qp - kp) < window
    return ok


def attend_reference(q, k, v, *, scale=None, causal=True, q_start=None, k_start=0,
                     chunk_size=None, window=None, sinks=None):
    """q [B, Hq, Tq, Dk], k [B, Hkv, Tk, Dk], v [B, Hkv, Tk, Dv], sinks None or [Hq]
    -> out [B, Hq, Tq, Dv] in q's dtype, lse [B, Hq, Tq] float32 (-inf where no key is visible;
    with sinks, the sink's logit is part of lse and such a row gets lse = sink, out 0)."""
    B, Hq, Tq, D = q.shape
    Hkv, Tk, Dv = k.shape[1], k.shape[2], v.shape[3]
    assert Hq % Hkv == 0, "query heads must be a multiple of key/value heads"
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if q_start is None:
        q_start = k_start + Tk - Tq
    qpos = torch.arange(q_start, q_start + Tq, device=q.device)
    kpos = torch.arange(k_start, k_start + Tk, device=q.device)
    mask = visible(qpos, kpos, causal, chunk_size, window)
    qf = q.float().reshape(B, Hkv, Hq // Hkv, Tq, D)
    s = torch.einsum("bhgqd,bhkd->bhgqk", qf, k.float()) * scale
    s = s.masked_fill(~mask, float("-inf"))
    if sinks is not None:  # one more column per head: the sink's logit, whose value is zero
        sink_col = sinks.float().to(q.device).reshape(1, Hkv, Hq // Hkv, 1, 1).expand(B, Hkv, Hq // Hkv, Tq, 1)
        s = torch.cat([s, sink_col], dim=-1)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.unsqueeze(-1).clamp_min(torch.finfo(torch.float32).min))
    p = torch.nan_to_num(p, nan=0.0)
    if sinks is not None:
        p = p[..., :Tk]  # the sink's probability is dropped: it only enlarged the denominator
    out = torch.einsum("bhgqk,bhkd->bhgqd", p, v.float())
    return out.reshape(B, Hq, Tq, Dv).to(q.dtype), lse.reshape(B, Hq, Tq)
