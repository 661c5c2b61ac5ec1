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

# Query block size under a sliding window: partial spans are at most about BLOCK_Q x (BLOCK_Q + window)
# and everything else goes to the fast kernel. Chunk rules only cut blocks at chunk boundaries.
BLOCK_Q = 4096
MIN_WINDOW_BLOCK = 128


def check_shapes(q, k, v):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attend expects q [B, Hq, Tq, D] and k/v [B, Hkv, Tk, D], got "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"attend: k and v must share one shape [B, Hkv, Tk, D] matching q's batch and "
                         f"head dim; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"attend: query heads ({q.shape[1]}) must be a multiple of key/value heads "
                         f"({k.shape[1]}) for grouped-query attention")


def _block_q(rules: Rules, Tq: int) -> int:
    if rules.window is not None:
        # Blocks no longer than the window keep the causal diagonal on the fast kernel.
        return max(MIN_WINDOW_BLOCK, min(BLOCK_Q, rules.window))
    return max(Tq, 1)  # chunk rules cut blocks at chunk boundaries anyway (masks.query_blocks)


def attend(q, k, v, *, scale=None, causal=True, q_start=None, k_start=0, chunk_size=None,
           window=None, backend="auto"):
    """q [B, Hq, Tq, D], k/v [B, Hkv, Tk, D] -> out [B, Hq, Tq, D] (q's dtype), lse [B, Hq, Tq] float32.

    Query i sits at absolute position q_start + i (default: the last Tq of the keys' positions),
    key j at k_start + j. Rows that see no key: out 0, lse -inf.
    """
    check_shapes(q, k, v)
    rules = Rules(causal, chunk_size, window)
    B, Hq, Tq, D = q.shape
    Tk = k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if q_start is None:
        q_start = k_start + Tk - Tq
    if backend == "reference":
        return attend_reference(q, k, v, scale=scale, causal=causal, q_start=q_start, k_start=k_start,
                                chunk_size=chunk_size, window=window)
    kern = kernels_for(backend, q.device, q.dtype)

    out = torch.zeros_like(q)
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
            out[:, :, q0 - q_start : q1 - q_start] = acc[0].to(q.dtype)
            lse[:, :, q0 - q_start : q1 - q_start] = acc[1]
    return out, lse
