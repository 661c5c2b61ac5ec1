"""Parts shared by every family: norms, the attention block skeleton, dense MLP, mixture of experts.

Shapes: T tokens, D model dim, Hq/Hkv query/key-value heads, Dh head dim, F feed-forward dim,
E experts, K experts per token, N = T*K routed (token, expert) pairs.

A Block is driven from outside in two halves so that a runner can put any attention it likes
(chunked, streamed from host, ring) between them:
    q, k, v = block.qkv(x_TD, pos_T)                  # norm, projections, positions applied
    out, _ = attention.attend(q, k, v, scale=block.scale, **block.mask)
    x_TD = block.finish(x_TD, out)                     # o-proj, residual, norm, FFN, residual

MoE modules carry `tap` (None, or a router_tap.RouterTap while `ctxprobe run --router-trace`
watches): their routing reports its scores and choices to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctxprobe.models import rope


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Normalise the last dim in float32, cast back, then scale (weight None: L2-style, no scale)."""
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return y if weight is None else weight * y


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


def _linear(d_in: int, d_out: int, bias: bool = False) -> nn.Linear:
    return nn.Linear(d_in, d_out, bias=bias)


class MLP(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x). w1/w3 [F, D], w2 [D, F]."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1, self.w3, self.w2 = _linear(dim, hidden), _linear(dim, hidden), _linear(hidden, dim)
        self.width = hidden        # activation per token (shape.py)

    def forward(self, x_TD):
        return self.w2(F.silu(self.w1(x_TD)) * self.w3(x_TD))


class Experts(nn.Module):
    """E SwiGLU experts in linear layout: w1/w3 [E, F, D], w2 [E, D, F] (Mixtral, Qwen3-MoE)."""

    def __init__(self, n: int, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n, hidden, dim), requires_grad=False)
        self.w3 = nn.Parameter(torch.empty(n, hidden, dim), requires_grad=False)
        self.w2 = nn.Parameter(torch.empty(n, dim, hidden), requires_grad=False)
        self.width = hidden

    def expert(self, e: int, x_ND):
        return F.linear(F.silu(F.linear(x_ND, self.w1[e])) * F.linear(x_ND, self.w3[e]), self.w2[e])


class FusedExperts(nn.Module):
    """E SwiGLU experts in Llama 4's stored layout: gate_up [E, D, 2F] (gate first), down [E, F, D]."""

    def __init__(self, n: int, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Parameter(torch.empty(n, dim, 2 * hidden), requires_grad=False)
        self.down = nn.Parameter(torch.empty(n, hidden, dim), requires_grad=False)
        self.width = 2 * hidden    # gate and up come out of one matmul

    def expert(self, e: int, x_ND):
        gate, up = (x_ND @ self.gate_up[e]).chunk(2, dim=-1)
        return (up * F.silu(gate)) @ self.down[e]


def grouped_dispatch(experts, x_TD, idx_TK, w_TK, scale_input: bool) -> torch.Tensor:
    """sum_k w[t,k] * expert_{idx[t,k]}(x[t]) (or expert(w * x) when scale_input), grouped by expert.

    Sorts the N = T*K (token, expert) pairs by expert so that each expert runs one matmul over
    a contiguous slice; the loop is over experts that received tokens, never over tokens.
    """
    T, K = idx_TK.shape
    flat_idx = idx_TK.reshape(-1)
    order = torch.argsort(flat_idx, stable=True)                      # [N]
    token_N = order // K
    w_N = w_TK.reshape(-1)[order].to(x_TD.dtype)[:, None]
    x_ND = x_TD[token_N]
    if scale_input:
        x_ND = x_ND * w_N
    counts = torch.bincount(flat_idx, minlength=experts_count(experts)).tolist()
    outs, start = [], 0
    for e, c in enumerate(counts):
        if c:
            outs.append(experts.expert(e, x_ND[start:start + c]))
        start += c
    y_ND = torch.cat(outs) if outs else x_ND.new_zeros(0, x_TD.shape[-1])
    if not scale_input:
        y_ND = y_ND * w_N
    # Back to (token, k) order, then sum over k: each row is written once, so unlike index_add_
    # (atomic adds on CUDA) the sum's order, and so its bits, never change from run to run.
    y_TKD = torch.empty_like(y_ND)
    y_TKD[order] = y_ND
    return y_TKD.view(T, K, x_TD.shape[-1]).sum(1)


def experts_count(experts) -> int:
    return (experts.w1 if isinstance(experts, Experts) else experts.gate_up).shape[0]


def dense_dispatch(experts, x_TD, idx_TK, w_TK, scale_input: bool) -> torch.Tensor:
    """The slow reference for grouped_dispatch: every expert on every token, masked by the routing."""
    out = torch.zeros_like(x_TD)
    for e in range(experts_count(experts)):
        w_T = (w_TK * (idx_TK == e)).sum(-1).to(x_TD.dtype)[:, None]   # 0 where e was not chosen
        hit = (idx_TK == e).any(-1)[:, None]
        y = experts.expert(e, x_TD * w_T) if scale_input else experts.expert(e, x_TD) * w_T
        out = out + torch.where(hit, y, torch.zeros_like(y))
    return out


class SoftmaxMoE(nn.Module):
    """Mixtral / Qwen3-MoE: softmax over all experts, top-k, optionally renormalised to sum 1."""

    def __init__(self, dim: int, hidden: int, n_experts: int, top_k: int, renormalise: bool):
        super().__init__()
        self.gate = _linear(dim, n_experts)
        self.experts = Experts(n_experts, dim, hidden)
        self.top_k, self.renormalise = top_k, renormalise
        self.tap = None

    def route(self, x_TD):
        probs = torch.softmax(self.gate(x_TD).float(), dim=-1)        # [T, E]
        w_TK, idx_TK = torch.topk(probs, self.top_k, dim=-1)
        if self.tap is not None:
            self.tap.see(probs, idx_TK)
        if self.renormalise:
            w_TK = w_TK / w_TK.sum(-1, keepdim=True)
        return idx_TK, w_TK

    def forward(self, x_TD):
        idx_TK, w_TK = self.route(x_TD)
        return grouped_dispatch(self.experts, x_TD, idx_TK, w_TK, scale_input=False)


class SigmoidMoE(nn.Module):
    """Llama 4: top-k router logits through a sigmoid scale the expert INPUT; a shared expert is always added."""

    def __init__(self, dim: int, hidden: int, n_experts: int, top_k: int):
        super().__init__()
        self.router = _linear(dim, n_experts)
        self.experts = FusedExperts(n_experts, dim, hidden)
        self.shared = MLP(dim, hidden)
        self.top_k = top_k
        self.tap = None

    def route(self, x_TD):
        logits_TE = self.router(x_TD)
        top_TK, idx_TK = torch.topk(logits_TE, self.top_k, dim=-1)
        if self.tap is not None:   # sigmoid is monotone: the same ranking, scores in [0, 1]
            self.tap.see(torch.sigmoid(logits_TE.float()), idx_TK)
        return idx_TK, torch.sigmoid(top_TK.float())

    def forward(self, x_TD):
        idx_TK, w_TK = self.route(x_TD)
        return self.shared(x_TD) + grouped_dispatch(self.experts, x_TD, idx_TK, w_TK, scale_input=True)


class Block(nn.Module):
    """One decoder layer: pre-norm attention then pre-norm feed-forward, both residual.

    Families subclass it and override `position` (and `project` when q/k are normalised).
    """

    def __init__(self, cfg, layer: int, ffn: nn.Module):
        super().__init__()
        D, Dh = cfg.dim, cfg.head_dim
        self.layer, self.n_heads, self.n_kv_heads, self.head_dim = layer, cfg.n_heads, cfg.n_kv_heads, Dh
        self.attn_norm, self.ffn_norm = RMSNorm(D, cfg.norm_eps), RMSNorm(D, cfg.norm_eps)
        bias = cfg.attention_bias
        self.wq, self.wk = _linear(D, cfg.n_heads * Dh, bias), _linear(D, cfg.n_kv_heads * Dh, bias)
        self.wv, self.wo = _linear(D, cfg.n_kv_heads * Dh, bias), _linear(cfg.n_heads * Dh, D, bias)
        self.ffn = ffn
        self.mask = cfg.layer_mask(layer)
        self.scale = Dh ** -0.5

    def project(self, x_TD):
        """-> q [Hq, T, Dh], k/v [Hkv, T, Dh] before positions."""
        h = self.attn_norm(x_TD)
        T = h.shape[0]
        q = self.wq(h).view(T, self.n_heads, self.head_dim).transpose(0, 1)
        k = self.wk(h).view(T, self.n_kv_heads, self.head_dim).transpose(0, 1)
        v = self.wv(h).view(T, self.n_kv_heads, self.head_dim).transpose(0, 1)
        return q, k, v

    def position(self, q, k, pos_T):
        raise NotImplementedError

    def qkv(self, x_TD, pos_T):
        """-> q [1, Hq, T, Dh], k [1, Hkv, T, Dh], v [1, Hkv, T, Dh], ready for attention.attend."""
        q, k, v = self.project(x_TD)
        pos_T = torch.as_tensor(pos_T, device=q.device)
        tap = getattr(self.ffn, "tap", None)
        if tap is not None:
            tap.remember(x_TD, pos_T)
        q, k = self.position(q, k, pos_T)
        return q[None], k[None], v[None]

    def finish(self, x_TD, attn_1HTD):
        tap = getattr(self.ffn, "tap", None)
        if tap is not None:
            tap.recall(x_TD)
        T = x_TD.shape[0]
        x_TD = x_TD + self.wo(attn_1HTD[0].transpose(0, 1).reshape(T, -1).to(x_TD.dtype))
        return x_TD + self.ffn(self.ffn_norm(x_TD))


class RopeBlock(Block):
    """A Block whose q and k get half-split RoPE at absolute positions (Llama, Mixtral, Qwen3)."""

    def __init__(self, cfg, layer, ffn):
        super().__init__(cfg, layer, ffn)
        self.rope_args = (cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)

    def position(self, q, k, pos_T):
        ang = rope.angles(pos_T, rope.inv_freq(*self.rope_args, device=pos_T.device))
        return rope.rotate_half_split(q, ang), rope.rotate_half_split(k, ang)
