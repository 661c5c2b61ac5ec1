"""Mixtral: Llama attention (optional sliding window) with a softmax top-k mixture of experts in every layer."""

from __future__ import annotations

from ctxprobe.models.blocks import SoftmaxMoE
from ctxprobe.models.llama import RopeBlock
from ctxprobe.models.model import Model


def build(cfg) -> Model:
    def moe():
        return SoftmaxMoE(cfg.dim, cfg.moe_ffn_dim, cfg.n_experts, cfg.top_k, renormalise=True)

    return Model(cfg, [RopeBlock(cfg, i, moe()) for i in range(cfg.n_layers)])
