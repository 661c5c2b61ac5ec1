"""Mixtral: Llama attention (optional sliding window) with a softmax top-k mixture of experts in every layer."""

from __future__ import annotations

from ctxprobe.models.blocks import RopeBlock, SoftmaxMoE
from ctxprobe.models.family import Family
from ctxprobe.models.keymap import ATTENTION, ENDS
from ctxprobe.models.model import Model

KEYS = {
    **ENDS, **ATTENTION,
    "model.layers.{}.block_sparse_moe.gate.weight": "blocks.{}.ffn.gate.weight",
    "model.layers.{}.block_sparse_moe.experts.{}.w1.weight": "blocks.{}.ffn.experts.w1[{}]",
    "model.layers.{}.block_sparse_moe.experts.{}.w3.weight": "blocks.{}.ffn.experts.w3[{}]",
    "model.layers.{}.block_sparse_moe.experts.{}.w2.weight": "blocks.{}.ffn.experts.w2[{}]",
}


def read_config(cfg, n_layers: int) -> dict:
    return dict(n_experts=cfg["num_local_experts"], top_k=cfg["num_experts_per_tok"],
                moe_ffn_dim=cfg["intermediate_size"], norm_topk_prob=True, moe_layers=[True] * n_layers,
                sliding_window=cfg.get("sliding_window"))


def build(cfg) -> Model:
    def moe():
        return SoftmaxMoE(cfg.dim, cfg.moe_ffn_dim, cfg.n_experts, cfg.top_k, renormalise=True)

    return Model(cfg, [RopeBlock(cfg, i, moe()) for i in range(cfg.n_layers)])


FAMILY = Family("mixtral", {"MixtralForCausalLM": KEYS}, read_config, build)
