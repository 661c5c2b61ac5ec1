"""Qwen3-MoE: per-head RMSNorm of q and k before half-split RoPE; softmax top-k experts
(renormalised when norm_topk_prob) on layers chosen by decoder_sparse_step / mlp_only_layers,
dense SwiGLU elsewhere."""

from __future__ import annotations

from ctxprobe.models.blocks import MLP, RMSNorm, SoftmaxMoE
from ctxprobe.models.llama import RopeBlock
from ctxprobe.models.model import Model


class Qwen3Block(RopeBlock):
    def __init__(self, cfg, layer, ffn):
        super().__init__(cfg, layer, ffn)
        self.q_norm, self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps), RMSNorm(cfg.head_dim, cfg.norm_eps)

    def project(self, x_TD):
        q, k, v = super().project(x_TD)
        return self.q_norm(q), self.k_norm(k), v


def build(cfg) -> Model:
    def ffn(i):
        if cfg.moe_layers[i]:
            return SoftmaxMoE(cfg.dim, cfg.moe_ffn_dim, cfg.n_experts, cfg.top_k, cfg.norm_topk_prob)
        return MLP(cfg.dim, cfg.ffn_dim)

    return Model(cfg, [Qwen3Block(cfg, i, ffn(i)) for i in range(cfg.n_layers)])
