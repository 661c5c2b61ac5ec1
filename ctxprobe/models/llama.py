"""Llama (1-3.x): GQA attention with half-split RoPE (llama3 frequency scaling when configured), SwiGLU MLP."""

from __future__ import annotations

from ctxprobe.models.blocks import MLP, RopeBlock
from ctxprobe.models.family import Family
from ctxprobe.models.keymap import ATTENTION, ENDS
from ctxprobe.models.model import Model

KEYS = {
    **ENDS, **ATTENTION,
    "model.layers.{}.mlp.gate_proj.weight": "blocks.{}.ffn.w1.weight",
    "model.layers.{}.mlp.up_proj.weight": "blocks.{}.ffn.w3.weight",
    "model.layers.{}.mlp.down_proj.weight": "blocks.{}.ffn.w2.weight",
}


def read_config(cfg, n_layers: int) -> dict:
    return {}   # the shared fields (config.py) are the whole of it


def build(cfg) -> Model:
    return Model(cfg, [RopeBlock(cfg, i, MLP(cfg.dim, cfg.ffn_dim)) for i in range(cfg.n_layers)])


FAMILY = Family("llama", {"LlamaForCausalLM": KEYS}, read_config, build)
