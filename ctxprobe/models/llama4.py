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
from ctxprobe.models.model import Model


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


def build(cfg) -> Model:
    def ffn(i):
        if cfg.moe_layers[i]:
            return SigmoidMoE(cfg.dim, cfg.moe_ffn_dim, cfg.n_experts, cfg.top_k)
        return MLP(cfg.dim, cfg.ffn_dim)

    return Model(cfg, [Llama4Block(cfg, i, ffn(i)) for i in range(cfg.n_layers)])
