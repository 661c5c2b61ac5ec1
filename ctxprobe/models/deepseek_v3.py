"""DeepSeek-V3 (DeepseekV3ForCausalLM; Kimi K2 and DeepSeek V3.1 share the layout): multi-head latent
attention (MLA) run in its absorbed form, and a sigmoid-scored, group-limited mixture of experts
with shared experts after the first dense layers.

Shapes: T tokens, D model dim, H query heads, R kv_lora_rank (the latent), P qk_rope_head_dim,
N qk_nope_head_dim, V v_head_dim, E routed experts, G expert groups, K experts per token.

MLA as stored: per token a latent c = norm(W_dkv x)[:R] and one rope key k_r (P dims, shared by
all heads); head h's key is [W_uk[h] c | k_r] and its value W_uv[h] c. Absorbed, the cached key
is K = [c | k_r] (one KV head of R+P dims) and the value the latent c itself (R dims), so the
cache per token is R+P numbers; each query head is projected into the latent space
(q_lat = W_uk[h]^T q_nope), and the latent output is projected by W_uv[h] afterwards:
    q.k_h = q_nope . W_uk[h] c + q_rope . k_r = [q_lat | q_rope] . [c | k_r]
The softmax scale stays (N+P)^-0.5, times YaRN's mscale(factor, mscale_all_dim)^2 when set.

FP8 block-quantized checkpoints (the published ones) are dequantized at load (models/quantized.py).
DeepSeek V3.2's sparse indexer (DeepseekV32ForCausalLM) is not supported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctxprobe.errors import UserError
from ctxprobe.models import rope
from ctxprobe.models.blocks import MLP, Experts, RMSNorm, grouped_dispatch
from ctxprobe.models.family import Family
from ctxprobe.models.keymap import ENDS
from ctxprobe.models.model import Model

_ATTN = "model.layers.{}.self_attn."
KEYS = {
    **ENDS,
    "model.layers.{}.input_layernorm.weight": "blocks.{}.attn_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "blocks.{}.ffn_norm.weight",
    **{_ATTN + f"{hf}.{part}": f"blocks.{{}}.{ours}.{part}" for hf, ours in [
        ("q_proj", "wq"), ("q_a_proj", "wq_a"), ("q_b_proj", "wq_b"), ("kv_a_proj_with_mqa", "wkv_a"),
        ("kv_b_proj", "wkv_b"), ("o_proj", "wo")] for part in ("weight", "bias")},
    _ATTN + "q_a_layernorm.weight": "blocks.{}.q_norm.weight",
    _ATTN + "kv_a_layernorm.weight": "blocks.{}.kv_norm.weight",
    _ATTN + "rotary_emb.inv_freq": None,
    # dense layers
    "model.layers.{}.mlp.gate_proj.weight": "blocks.{}.ffn.w1.weight",
    "model.layers.{}.mlp.up_proj.weight": "blocks.{}.ffn.w3.weight",
    "model.layers.{}.mlp.down_proj.weight": "blocks.{}.ffn.w2.weight",
    # MoE layers
    "model.layers.{}.mlp.gate.weight": "blocks.{}.ffn.gate.weight",
    "model.layers.{}.mlp.gate.e_score_correction_bias": "blocks.{}.ffn.score_bias",
    "model.layers.{}.mlp.experts.{}.gate_proj.weight": "blocks.{}.ffn.experts.w1[{}]",
    "model.layers.{}.mlp.experts.{}.up_proj.weight": "blocks.{}.ffn.experts.w3[{}]",
    "model.layers.{}.mlp.experts.{}.down_proj.weight": "blocks.{}.ffn.experts.w2[{}]",
    "model.layers.{}.mlp.shared_experts.gate_proj.weight": "blocks.{}.ffn.shared.w1.weight",
    "model.layers.{}.mlp.shared_experts.up_proj.weight": "blocks.{}.ffn.shared.w3.weight",
    "model.layers.{}.mlp.shared_experts.down_proj.weight": "blocks.{}.ffn.shared.w2.weight",
}


@dataclass(frozen=True)
class Settings:
    q_lora_rank: int | None      # None: queries come from one projection (wq), else wq_b(norm(wq_a x))
    kv_lora_rank: int            # R
    qk_nope_head_dim: int        # N
    qk_rope_head_dim: int        # P
    v_head_dim: int              # V
    rope_interleave: bool        # rotate adjacent pairs (True) or half-split planes
    n_group: int                 # G expert groups
    topk_group: int              # groups a token may route into
    routed_scaling_factor: float
    n_shared_experts: int
    mtp_layers: int              # multi-token-prediction layers stored after the last layer (dropped)


def softmax_scale(settings: Settings, scaling: dict | None) -> float:
    scale = (settings.qk_nope_head_dim + settings.qk_rope_head_dim) ** -0.5
    if scaling and scaling.get("rope_type") == "yarn" and scaling.get("mscale_all_dim"):
        scale *= rope.yarn_mscale(scaling["factor"], scaling["mscale_all_dim"]) ** 2
    return scale


class LatentAttentionBlock(nn.Module):
    """A decoder layer with MLA in absorbed form; same outside contract as blocks.Block
    (qkv / finish / scale / mask, n_kv_heads and head_dim of the cached K, v_head_dim of V)."""

    def __init__(self, cfg, layer: int, ffn: nn.Module):
        super().__init__()
        s: Settings = cfg.family_settings
        D, H, R, P, bias = cfg.dim, cfg.n_heads, s.kv_lora_rank, s.qk_rope_head_dim, cfg.attention_bias
        self.layer, self.settings, self.n_heads = layer, s, H
        self.n_kv_heads, self.head_dim, self.v_head_dim = 1, R + P, R     # the cache: [c | k_r] and c
        self.values_in_keys = True      # V is K's first R columns: attention.KVStore(values_in_keys=True) keeps K alone
        self.attn_norm, self.ffn_norm = RMSNorm(D, cfg.norm_eps), RMSNorm(D, cfg.norm_eps)
        qk = s.qk_nope_head_dim + P
        if s.q_lora_rank is None:
            self.wq = nn.Linear(D, H * qk, bias=False)
        else:
            self.wq_a = nn.Linear(D, s.q_lora_rank, bias=bias)
            self.q_norm = RMSNorm(s.q_lora_rank, 1e-6)     # HF's default eps, as in the reference
            self.wq_b = nn.Linear(s.q_lora_rank, H * qk, bias=False)
        self.wkv_a = nn.Linear(D, R + P, bias=bias)
        self.kv_norm = RMSNorm(R, 1e-6)
        self.wkv_b = nn.Linear(R, H * (s.qk_nope_head_dim + s.v_head_dim), bias=False)
        self.wo = nn.Linear(H * s.v_head_dim, D, bias=bias)
        self.ffn = ffn
        self.mask = cfg.layer_mask(layer)
        self.scale = softmax_scale(s, cfg.rope_scaling)
        self.rope_args = (P, cfg.rope_theta, cfg.rope_scaling)
        self.rope_gain = rope.attention_factor(cfg.rope_scaling)

    def _up_projections(self):
        """-> W_uk [H, N, R], W_uv [H, V, R] (views of wkv_b)."""
        s = self.settings
        w = self.wkv_b.weight.view(self.n_heads, s.qk_nope_head_dim + s.v_head_dim, s.kv_lora_rank)
        return w[:, :s.qk_nope_head_dim], w[:, s.qk_nope_head_dim:]

    def _rotate(self, x_HTP, pos_T):
        ang = rope.angles(pos_T, rope.inv_freq(*self.rope_args, device=pos_T.device))
        turn = rope.rotate_adjacent_pairs if self.settings.rope_interleave else rope.rotate_half_split
        x = turn(x_HTP, ang)
        return x if self.rope_gain == 1.0 else (x * self.rope_gain).to(x.dtype)

    def qkv(self, x_TD, pos_T):
        """-> q [1, H, T, R+P], k [1, 1, T, R+P], v [1, 1, T, R], ready for attention.attend."""
        s, T = self.settings, x_TD.shape[0]
        pos_T = torch.as_tensor(pos_T, device=x_TD.device)
        tap = getattr(self.ffn, "tap", None)
        if tap is not None:             # pairs these tokens with their positions for finish (router_tap.py)
            tap.remember(x_TD, pos_T)
        h = self.attn_norm(x_TD)
        q = self.wq(h) if s.q_lora_rank is None else self.wq_b(self.q_norm(self.wq_a(h)))
        q_nope, q_rope = q.view(T, self.n_heads, -1).transpose(0, 1).split(
            [s.qk_nope_head_dim, s.qk_rope_head_dim], dim=-1)
        latent, k_rope = self.wkv_a(h).split([s.kv_lora_rank, s.qk_rope_head_dim], dim=-1)
        latent = self.kv_norm(latent)                                        # [T, R]
        w_uk, _ = self._up_projections()
        q_lat = torch.einsum("htn,hnr->htr", q_nope, w_uk)                   # [H, T, R]
        q = torch.cat([q_lat, self._rotate(q_rope, pos_T)], dim=-1)
        k = torch.cat([latent, self._rotate(k_rope[None], pos_T)[0]], dim=-1)
        return q[None], k[None, None], latent[None, None]

    def finish(self, x_TD, attn_1HTR):
        tap = getattr(self.ffn, "tap", None)
        if tap is not None:
            tap.recall(x_TD)
        T = x_TD.shape[0]
        _, w_uv = self._up_projections()
        out = torch.einsum("htr,hvr->thv", attn_1HTR[0].to(x_TD.dtype), w_uv).reshape(T, -1)
        x_TD = x_TD + self.wo(out)
        return x_TD + self.ffn(self.ffn_norm(x_TD))


class GroupedSigmoidMoE(nn.Module):
    """Sigmoid expert scores; the choice adds a per-expert correction bias and keeps only the
    topk_group groups whose two best biased scores sum highest; the chosen experts' unbiased
    scores (renormalised when norm_topk_prob) times routed_scaling_factor weigh their outputs;
    shared experts always run."""

    def __init__(self, dim: int, hidden: int, n_experts: int, top_k: int, normalise: bool, s: Settings):
        super().__init__()
        self.gate = nn.Linear(dim, n_experts, bias=False)
        self.score_bias = nn.Parameter(torch.zeros(n_experts), requires_grad=False)   # [E]
        self.experts = Experts(n_experts, dim, hidden)
        self.shared = MLP(dim, hidden * s.n_shared_experts)
        self.top_k, self.normalise, self.settings = top_k, normalise, s
        self.tap = None                 # router_tap.RouterTap while a router trace watches

    def route(self, x_TD):
        s, E = self.settings, self.score_bias.shape[0]
        scores_TE = torch.sigmoid(x_TD.float() @ self.gate.weight.float().T)
        choice_TE = scores_TE + self.score_bias.float()
        group_TG = choice_TE.view(-1, s.n_group, E // s.n_group).topk(2, dim=-1).values.sum(-1)
        kept_TG = torch.zeros_like(group_TG).scatter_(1, group_TG.topk(s.topk_group, dim=-1).indices, 1.0)
        kept_TE = kept_TG.bool().repeat_interleave(E // s.n_group, dim=1)
        idx_TK = choice_TE.masked_fill(~kept_TE, float("-inf")).topk(self.top_k, dim=-1).indices
        if self.tap is not None:        # the sigmoid scores (the choice adds the bias and the group limit)
            self.tap.see(scores_TE, idx_TK)
        w_TK = scores_TE.gather(1, idx_TK)
        if self.normalise:
            w_TK = w_TK / (w_TK.sum(-1, keepdim=True) + 1e-20)
        return idx_TK, w_TK * s.routed_scaling_factor

    def forward(self, x_TD):
        idx_TK, w_TK = self.route(x_TD)
        return self.shared(x_TD) + grouped_dispatch(self.experts, x_TD, idx_TK, w_TK, scale_input=False)


def read_config(cfg, n_layers: int) -> dict:
    n_experts = cfg["n_routed_experts"]
    settings = Settings(
        q_lora_rank=cfg.get("q_lora_rank"), kv_lora_rank=cfg["kv_lora_rank"],
        qk_nope_head_dim=cfg["qk_nope_head_dim"], qk_rope_head_dim=cfg["qk_rope_head_dim"],
        v_head_dim=cfg["v_head_dim"], rope_interleave=bool(cfg.get("rope_interleave", True)),
        n_group=cfg.get("n_group") or 1, topk_group=cfg.get("topk_group") or 1,
        routed_scaling_factor=float(cfg.get("routed_scaling_factor", 1.0)),
        n_shared_experts=cfg.get("n_shared_experts") or 0, mtp_layers=cfg.get("num_nextn_predict_layers") or 0)
    E, G = n_experts, settings.n_group
    if E % G or E // G < 2 or settings.topk_group > G:
        raise UserError(f"{cfg.where}: {E} routed experts must split into n_group={G} groups of at least 2, "
                        f"of which topk_group={settings.topk_group} are kept; fix config.json")
    if settings.qk_rope_head_dim % 2:
        raise UserError(f"{cfg.where}: 'qk_rope_head_dim' must be even (rotation planes), found "
                        f"{settings.qk_rope_head_dim}; fix config.json")
    first_dense = cfg.get("first_k_dense_replace") or 0
    # The cached K is one head of R+P dims (see the module docstring); the rope dims rotate.
    return dict(n_experts=n_experts, top_k=cfg["num_experts_per_tok"], moe_ffn_dim=cfg["moe_intermediate_size"],
                norm_topk_prob=bool(cfg.get("norm_topk_prob", True)),
                moe_layers=[i >= first_dense for i in range(n_layers)],
                n_kv_heads=1, head_dim=settings.kv_lora_rank + settings.qk_rope_head_dim,
                v_head_dim=settings.kv_lora_rank,
                attention_bias=bool(cfg.get("attention_bias", False)), family_settings=settings)


def config_keys(cfg) -> dict:
    """The multi-token-prediction layers stored after the last decoder layer are not used."""
    n, extra = cfg.n_layers, cfg.family_settings.mtp_layers
    return {f"model.layers.{i}.*": None for i in range(n, n + extra)}


def build(cfg) -> Model:
    s = cfg.family_settings

    def ffn(i):
        if cfg.moe_layers[i]:
            return GroupedSigmoidMoE(cfg.dim, cfg.moe_ffn_dim, cfg.n_experts, cfg.top_k, cfg.norm_topk_prob, s)
        return MLP(cfg.dim, cfg.ffn_dim)

    return Model(cfg, [LatentAttentionBlock(cfg, i, ffn(i)) for i in range(cfg.n_layers)])


FAMILY = Family("deepseek_v3", {"DeepseekV3ForCausalLM": KEYS}, read_config, build, config_keys=config_keys)
