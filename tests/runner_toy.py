"""A hand-built model with the block interface (embed / blocks / head / logits), for runner tests.

Random float32 weights; Llama-shaped blocks (RMSNorm, GQA, RoPE, SwiGLU). Each layer may be
global, chunked-local (chunk_size) or sliding-window (window), so every mask the runner must
handle is exercised without a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ctxprobe import attention
@dataclass
class ToyConfig:
    dim: int = 32
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 8
    vocab_size: int = 61
    n_layers: int = 3
    v_head_dim: int | None = None     # Dv of the values (None: head_dim)


def _rope(x_HTD, pos_T):
    d = x_HTD.shape[-1] // 2
    freq = 1.0 / (10000 ** (torch.arange(d, dtype=torch.float32) / d))
    ang = pos_T.float()[:, None] * freq[None]                       # [T, d]
    cos, sin = ang.cos(), ang.sin()
    a, b = x_HTD[..., :d], x_HTD[..., d:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)


class ToyBlock:
    def __init__(self, cfg: ToyConfig, g: torch.Generator, mask: dict):
        D, Hq, Hkv, Dh = cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        Dv = cfg.v_head_dim or Dh
        w = lambda *s: torch.randn(*s, generator=g) / s[-1] ** 0.5  # noqa: E731
        self.wq, self.wk, self.wv, self.wo = w(Hq * Dh, D), w(Hkv * Dh, D), w(Hkv * Dv, D), w(D, Hq * Dv)
        self.w1, self.w2 = w(4 * D, D), w(D, 4 * D)
        self.n_heads, self.n_kv_heads, self.head_dim, self.v_head_dim = Hq, Hkv, Dh, Dv
        self.mask = {"causal": True, "chunk_size": None, "window": None, **mask}
        self.scale = Dh ** -0.5

    def qkv(self, x_TD, pos_T):
        T = x_TD.shape[0]
        h = torch.nn.functional.rms_norm(x_TD, (x_TD.shape[-1],))
        q = (h @ self.wq.T).view(T, self.n_heads, self.head_dim).transpose(0, 1)
        k = (h @ self.wk.T).view(T, self.n_kv_heads, self.head_dim).transpose(0, 1)
        v = (h @ self.wv.T).view(T, self.n_kv_heads, self.v_head_dim).transpose(0, 1)
        return _rope(q, pos_T)[None], _rope(k, pos_T)[None], v[None]

    def finish(self, x_TD, attn_1HTD):
        T = x_TD.shape[0]
        x_TD = x_TD + attn_1HTD[0].transpose(0, 1).reshape(T, -1) @ self.wo.T
        h = torch.nn.functional.rms_norm(x_TD, (x_TD.shape[-1],))
        return x_TD + torch.nn.functional.silu(h @ self.w1.T) @ self.w2.T


class ToyModel:
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, masks=({}, {"chunk_size": 5}, {"window": 7}), seed: int = 0, **cfg):
        self.config = ToyConfig(n_layers=len(masks), **cfg)
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.randn(self.config.vocab_size, self.config.dim, generator=g)
        self.blocks = [ToyBlock(self.config, g, m) for m in masks]
        # A sharp head so that greedy answers are decisive, not coin flips between near-ties.
        self.out = torch.randn(self.config.vocab_size, self.config.dim, generator=g) * 3

    def embed(self, ids_T):
        return self.emb[ids_T]

    def head(self, x_TD):
        return torch.nn.functional.rms_norm(x_TD, (x_TD.shape[-1],)) @ self.out.T

    def logits(self, token_ids):
        ids = torch.as_tensor(list(token_ids))
        x = self.embed(ids)
        pos = torch.arange(len(ids))
        for b in self.blocks:
            q, k, v = b.qkv(x, pos)
            out, _ = attention.attend(q, k, v, scale=b.scale, **b.mask)
            x = b.finish(x, out)
        return self.head(x)
