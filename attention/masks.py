"""Mask rules on absolute positions, decided per block so that no T x T mask is ever built.

Rules (they combine): causal (kpos <= qpos), chunk_size C (kpos // C == qpos // C, Llama 4's
chunked local attention), window W (qpos - kpos < W, sliding window).

For a query block [q0, q1) against keys [k0, k1), `plan_spans` returns the key spans the block
must attend to, each tagged with how to compute it:
    "full"   every query sees every key of the span: the fast kernel without a mask
    "diag"   the causal diagonal, starting at key q0: the fast kernel with is_causal (top-left
             alignment is exact here because the span's first key sits at the first query)
    "masked" a partial span: a small explicit [q1 - q0, span] mask for this pair only
Keys outside every span are invisible to the whole block and are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .reference import visible


@dataclass(frozen=True)
class Rules:
    causal: bool = True
    chunk_size: int | None = None
    window: int | None = None

    def __post_init__(self):
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {self.chunk_size}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be a positive integer, got {self.window}")


@dataclass(frozen=True)
class Span:
    start: int  # absolute key positions [start, end)
    end: int
    kind: str  # "full" | "diag" | "masked"


def visible_key_range(q0: int, q1: int, rules: Rules) -> tuple[float, float]:
    """Keys outside [lo, hi) are invisible to every query in [q0, q1) (bounds may be +-inf)."""
    lo, hi = float("-inf"), float("inf")
    if rules.causal:
        hi = q1  # the last query sees keys up to q1 - 1
    if rules.chunk_size is not None:
        C = rules.chunk_size
        lo = max(lo, (q0 // C) * C)
        hi = min(hi, ((q1 - 1) // C + 1) * C)
    if rules.window is not None:
        lo = max(lo, q0 - rules.window + 1)
    return lo, hi


def block_is_visible(q0: int, q1: int, k0: int, k1: int, rules: Rules) -> bool:
    """Whether any query in [q0, q1) may see any key in [k0, k1); False means skip the block.

    Exact for causal and window together; with chunk_size it may say True for a block whose
    only candidates fail another rule (the block's explicit mask then finds nothing to add).
    """
    if q0 >= q1 or k0 >= k1:
        return False
    lo, hi = visible_key_range(q0, q1, rules)
    if max(lo, k0) >= min(hi, k1):
        return False
    if rules.chunk_size is not None:
        C = rules.chunk_size
        if max(q0 // C, k0 // C) > min((q1 - 1) // C, (k1 - 1) // C):
            return False  # no chunk holds both a query and a key
    return True


def block_visible(q_range: tuple[int, int], k_range: tuple[int, int], causal: bool, chunk_size: int | None,
                  window: int | None) -> bool:
    """Does any query in [qs, qe) see any key in [ks, ke) (same mask as attention.reference.visible).

    Exact under every rule combination (block_is_visible above may say True for nothing); the
    ring and the sharded runner use it to skip (query piece, key piece) pairs."""
    (qs, qe), (ks, ke) = q_range, k_range
    if qe <= qs or ke <= ks:
        return False
    if chunk_size is None:
        return _some_distance_visible(qs, qe, ks, ke, causal, window)
    c = chunk_size
    lo, hi = max(qs // c, ks // c), min((qe - 1) // c, (ke - 1) // c)
    # Chunks strictly inside [lo, hi] are whole for both ranges (distance 0 occurs there), so
    # the first two and the last common chunk decide.
    for j in sorted({lo, lo + 1, hi}):
        if lo <= j <= hi and _some_distance_visible(max(qs, j * c), min(qe, (j + 1) * c),
                                                   max(ks, j * c), min(ke, (j + 1) * c), causal, window):
            return True
    return False


def _some_distance_visible(qs: int, qe: int, ks: int, ke: int, causal: bool, window: int | None) -> bool:
    # q - k takes every integer in [qs - (ke-1), (qe-1) - ks]; visible distances are
    # [0 if causal else -inf, window-1 if window else +inf].
    lowest, highest = qs - (ke - 1), (qe - 1) - ks
    if causal and highest < 0:
        return False
    return window is None or lowest <= window - 1


def visible_pairs(q_ranges: list[tuple[int, int]], k_ranges: list[tuple[int, int]], causal: bool,
                  chunk_size: int | None, window: int | None) -> list[tuple[int, int]]:
    """(query piece index, key piece index) for every pair with at least one visible entry."""
    return [(i, j) for i, qr in enumerate(q_ranges) for j, kr in enumerate(k_ranges)
            if block_visible(qr, kr, causal, chunk_size, window)]


def query_blocks(q0: int, q1: int, rules: Rules, block_q: int) -> list[tuple[int, int]]:
    """Split [q0, q1) into blocks of at most block_q queries, cut at chunk boundaries so that
    inside one block the chunk rule is all-or-nothing per key."""
    out = []
    start = q0
    while start < q1:
        end = min(q1, start + block_q)
        if rules.chunk_size is not None:
            C = rules.chunk_size
            end = min(end, (start // C + 1) * C)
        out.append((start, end))
        start = end
    return out


def trim_queries(q0: int, q1: int, k0: int, k1: int, rules: Rules) -> tuple[int, int]:
    """The part of [q0, q1) that may see a key of [k0, k1) (empty when q0 >= q1 on return):
    under causal, queries before k0 see none; under a window, queries at k1 - 1 + W or later."""
    if rules.causal:
        q0 = max(q0, k0)
    if rules.window is not None:
        q1 = min(q1, k1 - 1 + rules.window)
    return q0, max(q0, q1)


def plan_spans(q0: int, q1: int, k0: int, k1: int, rules: Rules) -> list[Span]:
    """Key spans of [k0, k1) that the query block [q0, q1) sees, in key order (see module doc).

    Assumes the block does not cross a chunk boundary when chunk_size is set (query_blocks), and
    gets the diagonal on the fast kernel when the block starts at or after k0 (trim_queries).
    """
    assert rules.chunk_size is None or q0 // rules.chunk_size == (q1 - 1) // rules.chunk_size
    lo, hi = visible_key_range(q0, q1, rules)
    lo, hi = int(max(lo, k0)), int(min(hi, k1))
    if lo >= hi:
        return []
    # Keys every query of the block sees lie in [flo, fhi).
    flo = lo if rules.window is None else max(lo, q1 - rules.window)
    fhi = min(hi, q0) if rules.causal else hi
    window_spares_diag = rules.window is None or q1 - 1 - q0 < rules.window
    if rules.causal and lo <= q0 < hi and window_spares_diag:
        # [lo, q0): a window's lower edge (masked), then keys all queries see; [q0, hi): diagonal.
        edge = min(flo, q0)
        spans = [Span(lo, edge, "masked"), Span(edge, q0, "full"), Span(q0, hi, "diag")]
        return [s for s in spans if s.start < s.end]
    if flo >= fhi:
        return [Span(lo, hi, "masked")]
    spans = [Span(lo, flo, "masked"), Span(flo, fhi, "full"), Span(fhi, hi, "masked")]
    return [s for s in spans if s.start < s.end]


def span_mask(q0: int, q1: int, s0: int, s1: int, rules: Rules, device) -> torch.Tensor:
    """[q1 - q0, s1 - s0] bool visibility for one partial span (small by construction)."""
    qpos = torch.arange(q0, q1, device=device)
    kpos = torch.arange(s0, s1, device=device)
    return visible(qpos, kpos, rules.causal, rules.chunk_size, rules.window)
