"""gpt-oss (GptOssForCausalLM): sliding-window and full layers alternating as config.layer_types says,
a learned sink logit per query head, biased projections, YaRN RoPE (half-split), and a mixture of
experts in every layer: a biased router's top-k logits softmaxed among themselves, experts running
a clamped SwiGLU with biases.

Shapes: T tokens, D model dim, E experts, F expert width (intermediate_size), Hq query heads.
MXFP4 checkpoints (the published ones) are dequantized at load (models/quantized.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctxprobe.errors import UserError
from ctxprobe.models import rope
from ctxprobe.models.blocks import RopeBlock, grouped_dispatch
from ctxprobe.models.family import Family
from ctxprobe.models.keymap import ATTENTION, ENDS
from ctxprobe.models.model import Model

KEYS = {
    **ENDS, **ATTENTION,
    **{f"model.layers.{{}}.self_attn.{p}_proj.bias": f"blocks.{{}}.w{p}.bias" for p in "qkvo"},
    "model.layers.{}.self_attn.sinks": "blocks.{}.sinks",
    "model.layers.{}.mlp.router.weight": "blocks.{}.ffn.router.weight",
    "model.layers.{}.mlp.router.bias": "blocks.{}.ffn.router.bias",
    "model.layers.{}.mlp.experts.gate_up_proj": "blocks.{}.ffn.experts.gate_up",
    "model.layers.{}.mlp.experts.gate_up_proj_bias": "blocks.{}.ffn.experts.gate_up_bias",
    "model.layers.{}.mlp.experts.down_proj": "blocks.{}.ffn.experts.down",
    "model.layers.{}.mlp.experts.down_proj_bias": "blocks.{}.ffn.experts.down_bias",
}


@dataclass(frozen=True)
class Settings:
    swiglu_alpha: float          # sigmoid gain of the experts' SwiGLU
    swiglu_limit: float          # clamp on the gate (above) and the up projection (both sides)


class ClampedExperts(nn.Module):
    """E experts as stored: gate_up [E, D, 2F] with gate and up columns interleaved (gate first),
    gate_up_bias [E, 2F], down [E, F, D], down_bias [E, D]."""

    def __init__(self, n: int, dim: int, hidden: int, alpha: float, limit: float):
        super().__init__()
        self.gate_up = nn.Parameter(torch.empty(n, dim, 2 * hidden), requires_grad=False)
        self.gate_up_bias = nn.Parameter(torch.empty(n, 2 * hidden), requires_grad=False)
        self.down = nn.Parameter(torch.empty(n, hidden, dim), requires_grad=False)
        self.down_bias = nn.Parameter(torch.empty(n, dim), requires_grad=False)
        self.alpha, self.limit = alpha, limit
        self.width = 2 * hidden     # gate and up come out of one matmul (shape.py)

    def expert(self, e: int, x_ND):
        gate_up = x_ND @ self.gate_up[e] + self.gate_up_bias[e]
        gate = gate_up[..., 0::2].clamp(max=self.limit)
        up = gate_up[..., 1::2].clamp(-self.limit, self.limit)
        return ((up + 1) * gate * torch.sigmoid(gate * self.alpha)) @ self.down[e] + self.down_bias[e]


class BiasedTopKMoE(nn.Module):
    """Router logits (with bias) -> top-k -> softmax over those k only -> weighted expert outputs."""

    def __init__(self, dim: int, hidden: int, n_experts: int, top_k: int, settings: Settings):
        super().__init__()
        self.router = nn.Linear(dim, n_experts, bias=True)
        self.experts = ClampedExperts(n_experts, dim, hidden, settings.swiglu_alpha, settings.swiglu_limit)
        self.top_k = top_k
        self.tap = None                 # router_tap.RouterTap while a router trace watches

    def route(self, x_TD):
        logits_TE = self.router(x_TD)
        top_TK, idx_TK = torch.topk(logits_TE, self.top_k, dim=-1)
        if self.tap is not None:        # softmax over all experts: the same ranking, scores in [0, 1]
            self.tap.see(torch.softmax(logits_TE.float(), dim=-1), idx_TK)
        return idx_TK, torch.softmax(top_TK.float(), dim=-1)

    def forward(self, x_TD):
        idx_TK, w_TK = self.route(x_TD)
        return grouped_dispatch(self.experts, x_TD, idx_TK, w_TK, scale_input=False)


class GptOssBlock(RopeBlock):
    def __init__(self, cfg, layer, ffn):
        super().__init__(cfg, layer, ffn)
        self.sinks = nn.Parameter(torch.empty(cfg.n_heads), requires_grad=False)   # [Hq] logits
        self.rope_gain = rope.attention_factor(cfg.rope_scaling)   # YaRN scales cos and sin

    def position(self, q, k, pos_T):
        q, k = super().position(q, k, pos_T)
        if self.rope_gain == 1.0:
            return q, k
        return (q * self.rope_gain).to(q.dtype), (k * self.rope_gain).to(k.dtype)


LAYER_TYPES = ("sliding_attention", "full_attention")


def read_config(cfg, n_layers: int) -> dict:
    types = cfg.get("layer_types") or [LAYER_TYPES[i % 2] for i in range(n_layers)]
    unknown = sorted(set(types) - set(LAYER_TYPES))
    if unknown or len(types) < n_layers:
        raise UserError(f"{cfg.where}: 'layer_types' must name {', '.join(LAYER_TYPES)} for each of the "
                        f"{n_layers} layers, found {unknown or len(types)}; fix config.json")
    settings = Settings(swiglu_alpha=float(cfg.get("swiglu_alpha", 1.702)),
                        swiglu_limit=float(cfg.get("swiglu_limit", 7.0)))
    return dict(n_experts=cfg["num_local_experts"], top_k=cfg["num_experts_per_tok"],
                moe_ffn_dim=cfg["intermediate_size"], moe_layers=[True] * n_layers,
                sliding_window=cfg.get("sliding_window"),
                window_layers=[t == "sliding_attention" for t in types[:n_layers]],
                attention_bias=bool(cfg.get("attention_bias", True)), family_settings=settings)


def build(cfg) -> Model:
    def moe():
        return BiasedTopKMoE(cfg.dim, cfg.moe_ffn_dim, cfg.n_experts, cfg.top_k, cfg.family_settings)

    return Model(cfg, [GptOssBlock(cfg, i, moe()) for i in range(cfg.n_layers)])


FAMILY = Family("gpt_oss", {"GptOssForCausalLM": KEYS}, read_config, build, default_rope_theta=150000.0)
