"""`attend`: exact attention over positions with mask rules, done block pair by block pair.

Queries are cut into blocks only where a rule needs it (chunk boundaries, sliding windows);
for each query block `masks.plan_spans` names the key spans it sees and how (full / diag /
masked); fully masked keys are never touched. Spans merge with the log-sum-exp rule in float32.
Shapes: q [B, Hq, Tq, D], k/v [B, Hkv, Tk, D], out [B, Hq, Tq, D], lse [B, Hq, Tq] float32.
"""

from __future__ import annotations

import math

import torch

from .backends import kernels_for
from .masks import Rules, plan_spans, query_blocks, span_mask, trim_queries
from .merge import merge
from .reference import attend_reference
from .sinks import apply_sinks, check_sinks

# Query block size under a sliding window: partial spans are at most about BLOCK_Q x (BLOCK_Q + window)
# and everything else goes to the fast kernel. Chunk rules only cut blocks at chunk boundaries.
BLOCK_Q = 4096
MIN_WINDOW_BLOCK = 128


def check_shapes(q, k, v):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attend expects q [B, Hq, Tq, Dk], k [B, Hkv, Tk, Dk] and v [B, Hkv, Tk, Dv], got "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"attend: k [B, Hkv, Tk, Dk] and v [B, Hkv, Tk, Dv] must agree on B, Hkv and Tk, "
                         f"and k's head dim must be q's; got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"attend: query heads ({q.shape[1]}) must be a multiple of key/value heads "
                         f"({k.shape[1]}) for grouped-query attention")


def _block_q(rules: Rules, Tq: int) -> int:
    if rules.window is not None:
        # Blocks no longer than the window keep the causal diagonal on the fast kernel.
        return max(MIN_WINDOW_BLOCK, min(BLOCK_Q, rules.window))
    return max(Tq, 1)  # chunk rules cut blocks at chunk boundaries anyway (masks.query_blocks)


def attend(q, k, v, *, scale=None, causal=True, q_start=None, k_start=0, chunk_size=None,
           window=None, backend="auto", sinks=None):
    """q [B, Hq, Tq, Dk], k [B, Hkv, Tk, Dk], v [B, Hkv, Tk, Dv]
    -> out [B, Hq, Tq, Dv] (q's dtype), lse [B, Hq, Tq] float32.

    Query i sits at absolute position q_start + i (default: the last Tq of the keys' positions),
    key j at k_start + j. Rows that see no key: out 0, lse -inf.
    sinks [Hq] (float): a per-head logit in the softmax denominator (gpt-oss), applied to the
    result; rows that see no key then give out 0, lse = sink. When this call attends to only
    part of the keys and its result is merged with others, pass sinks to none of the calls and
    `apply_sinks` once to the merged result.
    """
    check_shapes(q, k, v)
    check_sinks(sinks, q.shape[1])
    rules = Rules(causal, chunk_size, window)
    B, Hq, Tq, D = q.shape
    Tk, Dv = k.shape[2], v.shape[3]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if q_start is None:
        q_start = k_start + Tk - Tq
    if backend == "reference":
        return attend_reference(q, k, v, scale=scale, causal=causal, q_start=q_start, k_start=k_start,
                                chunk_size=chunk_size, window=window, sinks=sinks)
    kern = kernels_for(backend, q.device, q.dtype)

    out = q.new_zeros(B, Hq, Tq, Dv)
    lse = torch.full((B, Hq, Tq), float("-inf"), dtype=torch.float32, device=q.device)
    for q0, q1 in query_blocks(q_start, q_start + Tq, rules, _block_q(rules, Tq)):
        q0, q1 = trim_queries(q0, q1, k_start, k_start + Tk, rules)  # the rest see no key: stay empty
        if q0 >= q1:
            continue
        qb = q[:, :, q0 - q_start : q1 - q_start]
        acc = None
        for span in plan_spans(q0, q1, k_start, k_start + Tk, rules):
            kb = k[:, :, span.start - k_start : span.end - k_start]
            vb = v[:, :, span.start - k_start : span.end - k_start]
            if span.kind == "full":
                part = kern.full(qb, kb, vb, scale)
            elif span.kind == "diag":
                part = kern.diag(qb, kb, vb, scale)
            else:
                # An all-False mask (possible when chunk and window combine) yields an empty part;
                # checking for it first would cost a device sync.
                mask = span_mask(q0, q1, span.start, span.end, rules, q.device)
                part = kern.masked(qb, kb, vb, scale, mask)
            acc = part if acc is None else merge(acc[0], acc[1], part[0], part[1])
        if acc is not None:
            if sinks is not None:  # on the float32 merge, before rounding to q's dtype
                acc = apply_sinks(acc[0].float(), acc[1], sinks)
            out[:, :, q0 - q_start : q1 - q_start] = acc[0].to(q.dtype)
            lse[:, :, q0 - q_start : q1 - q_start] = acc[1]
    if sinks is not None:  # rows no block wrote see no key at all: only the sink
        lse = torch.where(torch.isneginf(lse), sinks.float().to(lse.device).view(1, -1, 1).expand_as(lse), lse)
    return out, lse
