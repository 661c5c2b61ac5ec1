"""Qwen3-MoE: per-head RMSNorm of q and k before half-split RoPE; softmax top-k experts
(renormalised when norm_topk_prob) on layers chosen by decoder_sparse_step / mlp_only_layers,
dense SwiGLU elsewhere."""

from __future__ import annotations

from ctxprobe.models import llama
from ctxprobe.models.blocks import MLP, RMSNorm, RopeBlock, SoftmaxMoE
from ctxprobe.models.family import Family
from ctxprobe.models.model import Model

KEYS = {
    **llama.KEYS,   # the dense layers are Llama's
    "model.layers.{}.self_attn.q_norm.weight": "blocks.{}.q_norm.weight",
    "model.layers.{}.self_attn.k_norm.weight": "blocks.{}.k_norm.weight",
    "model.layers.{}.mlp.gate.weight": "blocks.{}.ffn.gate.weight",
    "model.layers.{}.mlp.experts.{}.gate_proj.weight": "blocks.{}.ffn.experts.w1[{}]",
    "model.layers.{}.mlp.experts.{}.up_proj.weight": "blocks.{}.ffn.experts.w3[{}]",
    "model.layers.{}.mlp.experts.{}.down_proj.weight": "blocks.{}.ffn.experts.w2[{}]",
}


def read_config(cfg, n_layers: int) -> dict:
    step, dense = cfg.get("decoder_sparse_step", 1), set(cfg.get("mlp_only_layers") or [])
    n_experts = cfg.get("num_experts", cfg.get("num_local_experts")) or 0  # transformers 5 writes the latter
    moe = [i not in dense and n_experts > 0 and (i + 1) % step == 0 for i in range(n_layers)]
    # As in transformers, the window (when switched on) applies to every layer; max_window_layers is unused.
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window") else None
    return dict(n_experts=n_experts, top_k=cfg["num_experts_per_tok"], moe_ffn_dim=cfg["moe_intermediate_size"],
                norm_topk_prob=bool(cfg.get("norm_topk_prob", False)), moe_layers=moe, sliding_window=window)


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


FAMILY = Family("qwen3_moe", {"Qwen3MoeForCausalLM": KEYS}, read_config, build)
