"""Llama 4 (text): the layer pattern that long-context probing cares most about.

RoPE layers (3 of every 4): adjacent-pair RoPE, then a weightless L2 norm of q and k; they attend
only inside `attention_chunk_size`-aligned chunks. NoPE layers (every 4th): no positions, global
attention, and q scaled by a position-dependent temperature log1p(floor((pos+1)/floor_scale))*attn_scale+1.
Feed-forward alternates (interleave_moe_layer_step) between a dense SwiGLU (intermediate_size_mlp)
and a sigmoid-routed MoE whose router score scales the expert input, plus a shared expert.
"""

from __future__ import annotations

import torch

from ctxprobe.models import rope
from ctxprobe.models.blocks import MLP, Block, SigmoidMoE, rms_norm
from ctxprobe.models.family import Family
from ctxprobe.models.keymap import ATTENTION, ENDS
from ctxprobe.models.model import Model

KEYS = {
    **ENDS, **ATTENTION,
    "model.layers.{}.feed_forward.gate_proj.weight": "blocks.{}.ffn.w1.weight",
    "model.layers.{}.feed_forward.up_proj.weight": "blocks.{}.ffn.w3.weight",
    "model.layers.{}.feed_forward.down_proj.weight": "blocks.{}.ffn.w2.weight",
    "model.layers.{}.feed_forward.router.weight": "blocks.{}.ffn.router.weight",
    "model.layers.{}.feed_forward.experts.gate_up_proj": "blocks.{}.ffn.experts.gate_up",
    "model.layers.{}.feed_forward.experts.down_proj": "blocks.{}.ffn.experts.down",
    "model.layers.{}.feed_forward.shared_expert.gate_proj.weight": "blocks.{}.ffn.shared.w1.weight",
    "model.layers.{}.feed_forward.shared_expert.up_proj.weight": "blocks.{}.ffn.shared.w3.weight",
    "model.layers.{}.feed_forward.shared_expert.down_proj.weight": "blocks.{}.ffn.shared.w2.weight",
}

# The multimodal checkpoint holds the same text model under `language_model.`.
MULTIMODAL_KEYS = {
    **{f"language_model.{k}": v for k, v in KEYS.items()},
    "vision_model.*": None,
    "multi_modal_projector.*": None,
}


def temperature(pos_T: torch.Tensor, floor_scale: float, attn_scale: float) -> torch.Tensor:
    """[T] float32 query scale of NoPE layers."""
    return torch.log1p(torch.floor((pos_T.float() + 1.0) / floor_scale)) * attn_scale + 1.0


class Llama4Block(Block):
    def __init__(self, cfg, layer, ffn):
        super().__init__(cfg, layer, ffn)
        self.use_rope = cfg.rope_layers[layer]
        self.l2_qk_norm = cfg.l2_qk_norm and self.use_rope
        self.use_temperature = cfg.attn_temperature and not self.use_rope
        self.norm_eps, self.floor_scale, self.attn_scale = cfg.norm_eps, cfg.floor_scale, cfg.attn_scale
        self.rope_args = (cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)

    def position(self, q, k, pos_T):
        if self.use_rope:
            ang = rope.angles(pos_T, rope.inv_freq(*self.rope_args, device=pos_T.device))
            q, k = rope.rotate_adjacent_pairs(q, ang), rope.rotate_adjacent_pairs(k, ang)
        if self.l2_qk_norm:
            q, k = rms_norm(q, None, self.norm_eps), rms_norm(k, None, self.norm_eps)
        if self.use_temperature:
            q = (q * temperature(pos_T, self.floor_scale, self.attn_scale)[:, None].to(q.device)).to(q.dtype)
        return q, k


def read_config(cfg, n_layers: int) -> dict:
    n = n_layers
    interval = cfg.get("no_rope_layer_interval", 4)
    # no_rope_layers[i] == 1 means layer i DOES use RoPE (HF's naming); every 4th layer is NoPE.
    uses_rope = [bool(x) for x in (cfg.get("no_rope_layers") or [(i + 1) % interval != 0 for i in range(n)])][:n]
    step = cfg.get("interleave_moe_layer_step", 1)
    moe_ids = cfg.get("moe_layers")
    moe_ids = set(range(step - 1, n, step) if moe_ids is None else moe_ids)
    chunk = cfg.get("attention_chunk_size")
    types = cfg.get("layer_types") or ["chunked_attention" if r and chunk is not None else "full_attention"
                                       for r in uses_rope]
    return dict(n_experts=cfg.get("num_local_experts", 0), top_k=cfg.get("num_experts_per_tok", 1),
                moe_ffn_dim=cfg["intermediate_size"],
                ffn_dim=cfg.get("intermediate_size_mlp", cfg["intermediate_size"]),
                moe_layers=[i in moe_ids for i in range(n)], rope_layers=uses_rope, chunk_size=chunk,
                chunked_layers=[t == "chunked_attention" for t in types[:n]],
                l2_qk_norm=bool(cfg.get("use_qk_norm", True)),
                attn_temperature=bool(cfg.get("attn_temperature_tuning", True)),
                floor_scale=float(cfg.get("floor_scale", 8192)), attn_scale=float(cfg.get("attn_scale", 0.1)))


def build(cfg) -> Model:
    def ffn(i):
        if cfg.moe_layers[i]:
            return SigmoidMoE(cfg.dim, cfg.moe_ffn_dim, cfg.n_experts, cfg.top_k)
        return MLP(cfg.dim, cfg.ffn_dim)

    return Model(cfg, [Llama4Block(cfg, i, ffn(i)) for i in range(cfg.n_layers)])


FAMILY = Family("llama4", {"Llama4ForCausalLM": KEYS, "Llama4ForConditionalGeneration": MULTIMODAL_KEYS},
                read_config, build, default_rope_theta=500000.0,
                nested_text=frozenset({"Llama4ForConditionalGeneration"}))
