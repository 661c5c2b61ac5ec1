"""Llama (1-3.x): GQA attention with half-split RoPE (llama3 frequency scaling when configured), SwiGLU MLP."""

from __future__ import annotations

from ctxprobe.models import rope
from ctxprobe.models.blocks import MLP, Block
from ctxprobe.models.model import Model


class RopeBlock(Block):
    """A Block whose q and k get half-split RoPE at absolute positions (also Mixtral's and Qwen3's)."""

    def __init__(self, cfg, layer, ffn):
        super().__init__(cfg, layer, ffn)
        self.rope_args = (cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)

    def position(self, q, k, pos_T):
        ang = rope.angles(pos_T, rope.inv_freq(*self.rope_args, device=pos_T.device))
        return rope.rotate_half_split(q, ang), rope.rotate_half_split(k, ang)


def build(cfg) -> Model:
    return Model(cfg, [RopeBlock(cfg, i, MLP(cfg.dim, cfg.ffn_dim)) for i in range(cfg.n_layers)])
