"""A router trace: how a mixture-of-experts router behaves as position grows, for one prompt.

Positions fall in log-spaced buckets: bucket 0 holds position 0, bucket b >= 1 holds
[2^(b-1), 2^b), so a 1M-token prompt has 21 buckets. Per MoE layer l and bucket b, and nothing
per token:

    load_LBE[l, b, e]   how many of the bucket's tokens chose expert e (each token chooses K)
    tokens_LB[l, b]     tokens routed
    margin_LB[l, b]     mean top-1 margin over those tokens: the router's best per-expert score
                        minus its second best (NaN where no token fell)

The margin is read in the per-expert score each family's router reports (models/router_tap.py),
always in [0, 1]: the softmax probability over all experts (Mixtral, Qwen3-MoE) or the sigmoid of
the logit (Llama 4). A small margin means the router barely prefers its first choice.

Plain numpy (no torch): the store, the report and the HTTP-only install read traces too.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

import numpy as np

MARGIN = "top-1 minus top-2 router score (the softmax probability over all experts, or the sigmoid where the router uses one)"


def bucket_of(position: int) -> int:
    return int(position).bit_length()


def n_buckets(length: int) -> int:
    """Buckets that a prompt of `length` tokens reaches."""
    return bucket_of(max(length, 1) - 1) + 1


def bucket_start(b: int) -> int:
    return 0 if b == 0 else 1 << (b - 1)


def bucket_end(b: int) -> int:
    """One past the bucket's last position."""
    return 1 << b


def bucket_label(b: int) -> str:
    start, last = bucket_start(b), bucket_end(b) - 1
    return str(start) if start == last else f"{start}-{last}"


@dataclass
class RouterTrace:
    layers: tuple[int, ...]          # the model's MoE layer indices, one per row of the arrays
    load_LBE: np.ndarray             # int64
    tokens_LB: np.ndarray            # int64
    margin_LB: np.ndarray            # float64 mean, NaN where tokens_LB == 0

    def __post_init__(self):
        self.layers = tuple(int(x) for x in self.layers)
        self.load_LBE = np.asarray(self.load_LBE, dtype=np.int64)
        self.tokens_LB = np.asarray(self.tokens_LB, dtype=np.int64)
        self.margin_LB = np.asarray(self.margin_LB, dtype=np.float64)
        L, B, _ = self.load_LBE.shape
        assert len(self.layers) == L and self.tokens_LB.shape == self.margin_LB.shape == (L, B)

    @property
    def n_experts(self) -> int:
        return self.load_LBE.shape[2]

    @property
    def n_buckets(self) -> int:
        return self.load_LBE.shape[1]

    def entropy_LB(self) -> np.ndarray:
        """Entropy (bits) of each layer's expert load in each bucket; NaN where no token fell.
        0: every token of the bucket chose the same experts; log2(E): load spread evenly."""
        total = self.load_LBE.sum(-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = self.load_LBE / total
            h = 0.0 - np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0).sum(-1)   # never -0.0
        return np.where(total[..., 0] > 0, h, np.nan)

    def top_expert_LB(self) -> np.ndarray:
        """The most chosen expert per layer and bucket (-1 where no token fell)."""
        return np.where(self.tokens_LB > 0, self.load_LBE.argmax(-1), -1)

    # -- encoding (the store keeps one row per cell: these columns) -------------------------

    def encode(self) -> tuple[str, bytes]:
        """-> (JSON of the shapes, zlib-compressed little-endian int32 load [L, B, E], int32
        tokens [L, B], float32 mean margin [L, B])."""
        assert self.load_LBE.max(initial=0) < 2**31, "a bucket's count does not fit int32"
        meta = json.dumps({"layers": list(self.layers), "buckets": self.n_buckets, "experts": self.n_experts})
        raw = b"".join(a.astype(dtype).tobytes() for a, dtype in
                       ((self.load_LBE, "<i4"), (self.tokens_LB, "<i4"), (self.margin_LB, "<f4")))
        return meta, zlib.compress(raw, 6)

    @classmethod
    def decode(cls, meta: str, blob: bytes) -> "RouterTrace":
        shape = json.loads(meta)
        L, B, E = len(shape["layers"]), shape["buckets"], shape["experts"]
        raw = zlib.decompress(blob)
        n_load, n_lb = L * B * E * 4, L * B * 4
        if len(raw) != n_load + 2 * n_lb:
            raise ValueError(f"router trace holds {len(raw)} bytes, not the {n_load + 2 * n_lb} its shapes say")
        load = np.frombuffer(raw, "<i4", L * B * E).reshape(L, B, E)
        tokens = np.frombuffer(raw, "<i4", L * B, offset=n_load).reshape(L, B)
        margin = np.frombuffer(raw, "<f4", L * B, offset=n_load + n_lb).reshape(L, B)
        return cls(shape["layers"], load, tokens, margin)


def pooled(traces: list[RouterTrace]) -> RouterTrace | None:
    """Several prompts' traces as one (loads and tokens add, margins average by tokens); the
    traces must come from one model (same layers and experts). None for no traces."""
    if not traces:
        return None
    first = traces[0]
    if any(t.layers != first.layers or t.n_experts != first.n_experts for t in traces):
        raise ValueError("router traces of different models cannot be pooled")
    B = max(t.n_buckets for t in traces)
    L, E = len(first.layers), first.n_experts
    load, tokens, margin_sum = np.zeros((L, B, E), np.int64), np.zeros((L, B), np.int64), np.zeros((L, B))
    for t in traces:
        b = t.n_buckets
        load[:, :b] += t.load_LBE
        tokens[:, :b] += t.tokens_LB
        margin_sum[:, :b] += np.where(t.tokens_LB > 0, np.nan_to_num(t.margin_LB) * t.tokens_LB, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        margin = np.where(tokens > 0, margin_sum / tokens, np.nan)
    return RouterTrace(first.layers, load, tokens, margin)
