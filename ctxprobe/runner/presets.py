"""Named model shapes with random weights, built on the fly: benchmark a layout without a checkpoint.

    model = build_preset("scout-4l", device="cuda", dtype="bfloat16")

`scout-*` use Llama 4 Scout's widths (its published config.json): hidden 5120, 40 query heads,
8 KV heads of 128, 16 experts (top-1) of 8192 plus a shared expert, dense MLP 16384, vocab 202048,
local layers in 8192-token chunks, every 4th layer global and NoPE. `tiny` is the same layout at
toy widths, for CPUs and tests.
`gpt-oss-120b-*`: hidden 2880, 64 query heads and 8 KV heads of 64 with sinks, 128-token windows on
every other layer, 128 experts (top-4) of 2880, YaRN x32 over 4096 positions, vocab 201088.
`deepseek-v3-*`: hidden 7168, 128 heads in multi-head latent attention (latent 512 + rope key 64
cached per token, q rank 1536), the first 3 layers dense (18432), then 256 experts (top-8 within 4
of 8 groups) of 2048 plus a shared one, YaRN x40 with mscale, vocab 129280; 4 layers hold one MoE.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ctxprobe.errors import UserError

SCOUT = dict(architectures=["Llama4ForCausalLM"], model_type="llama4_text", vocab_size=202048,
             hidden_size=5120, intermediate_size=8192, intermediate_size_mlp=16384, num_attention_heads=40,
             num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5, num_local_experts=16,
             num_experts_per_tok=1, interleave_moe_layer_step=1, no_rope_layer_interval=4,
             attention_chunk_size=8192, use_qk_norm=True, attn_temperature_tuning=True, floor_scale=8192,
             attn_scale=0.1, max_position_embeddings=10485760, tie_word_embeddings=False,
             rope_scaling=dict(rope_type="llama3", rope_theta=500000.0, factor=16.0, low_freq_factor=1.0,
                               high_freq_factor=1.0, original_max_position_embeddings=8192),
             rope_theta=500000.0, torch_dtype="bfloat16", bos_token_id=200000, eos_token_id=[200001])

GPT_OSS_120B = dict(architectures=["GptOssForCausalLM"], model_type="gpt_oss", vocab_size=201088, hidden_size=2880,
                   intermediate_size=2880, num_attention_heads=64, num_key_value_heads=8, head_dim=64,
                   num_local_experts=128, num_experts_per_tok=4, sliding_window=128, rms_norm_eps=1e-5,
                   attention_bias=True, swiglu_limit=7.0, max_position_embeddings=131072, tie_word_embeddings=False,
                   rope_scaling=dict(rope_type="yarn", rope_theta=150000.0, factor=32.0, beta_fast=32.0,
                                     beta_slow=1.0, truncate=False, original_max_position_embeddings=4096),
                   torch_dtype="bfloat16", bos_token_id=199998, eos_token_id=[200002, 199999])

DEEPSEEK_V3 = dict(architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3", vocab_size=129280,
                   hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048, num_attention_heads=128,
                   num_key_value_heads=128, n_shared_experts=1, n_routed_experts=256, routed_scaling_factor=2.5,
                   kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128,
                   n_group=8, topk_group=4, num_experts_per_tok=8, first_k_dense_replace=3, norm_topk_prob=True,
                   max_position_embeddings=163840, rms_norm_eps=1e-6, tie_word_embeddings=False,
                   rope_scaling=dict(type="yarn", rope_theta=10000.0, factor=40.0, beta_fast=32, beta_slow=1,
                                     mscale=1.0, mscale_all_dim=1.0, original_max_position_embeddings=4096),
                   rope_theta=10000.0, torch_dtype="bfloat16", bos_token_id=0, eos_token_id=1)

PRESETS = {
    "tiny": dict(SCOUT, vocab_size=512, hidden_size=64, intermediate_size=32, intermediate_size_mlp=96,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                 attention_chunk_size=64, floor_scale=64, num_hidden_layers=4, torch_dtype="float32",
                 max_position_embeddings=1 << 20,
                 rope_scaling=dict(SCOUT["rope_scaling"], original_max_position_embeddings=64)),
    "scout-4l": dict(SCOUT, num_hidden_layers=4),
    "scout-48l": dict(SCOUT, num_hidden_layers=48),
    "gpt-oss-120b-4l": dict(GPT_OSS_120B, num_hidden_layers=4),
    "gpt-oss-120b-36l": dict(GPT_OSS_120B, num_hidden_layers=36),
    "deepseek-v3-4l": dict(DEEPSEEK_V3, num_hidden_layers=4),
    "deepseek-v3-61l": dict(DEEPSEEK_V3, num_hidden_layers=61),
}


def preset_config(name: str):
    from ctxprobe.models.config import from_hf

    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return from_hf(dict(PRESETS[name]), where=f"preset {name}")


@torch.no_grad()
def build_preset(name: str, *, device="cpu", dtype=None, seed: int = 0, weights: str = "resident"):
    """A model of preset `name` with N(0, 1/fan_in) weights drawn on `device`.

    weights: "resident", or "host" (blocks moved into page-locked host arenas of exact size, one
    per layer, and streamed to a CUDA device one layer ahead; on CPU this is "resident"). A preset
    has no files, so the "disk" tier is refused. Embedding and head always live on `device`.
    """
    from ctxprobe.models.loader import build_empty, parse_dtype
    from ctxprobe.runner.weights import HostArenas, weight_tier

    if weights == "disk":
        raise UserError(f"preset {name!r} has no checkpoint files to stream weights from, so the disk weight "
                        "tier is not available; keep its weights resident or in host memory (--weights host), "
                        "or benchmark a checkpoint directory")

    cfg = preset_config(name)
    dt = parse_dtype(dtype or cfg.dtype)
    cfg.dtype = str(dt).removeprefix("torch.")
    model = build_empty(cfg)
    device = torch.device(device)
    tier = weight_tier(weights, device)
    g = torch.Generator(device=device).manual_seed(seed)
    arenas = HostArenas([]) if tier == "host" else None
    drawing = None   # the block whose parameters are being drawn (same order as ever: same weights)
    for mod_name, module in model.named_modules():
        layer = int(mod_name.split(".")[1]) if mod_name.startswith("blocks.") else None
        if arenas is not None and drawing is not None and layer != drawing:
            arenas.add(model.blocks[drawing])   # to its host arena: one layer on the device at a time
        drawing = layer
        _draw(module, dt, device, g)
    if arenas is not None:
        if drawing is not None:
            arenas.add(model.blocks[drawing])
        model.blocks.weight_source = arenas
    if cfg.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.weight_tier = tier
    model.path = f"preset:{name}"
    return model


def _draw(module: nn.Module, dtype, device, g):
    """The module's own parameters: N(0, 1/fan_in) for matrices, 1 for norm weights, drawn on `device`."""
    for name, p in module._parameters.items():
        if p is None:
            continue
        t = torch.empty(p.shape, dtype=dtype, device=device)
        if p.dim() == 1:
            t.fill_(1.0)
        else:
            # Llama 4's and gpt-oss's fused experts store [E, D_in, D_out]; everything else [.., D_out, D_in].
            fan_in = p.shape[-2] if name in ("gate_up", "down") else p.shape[-1]
            t.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=g)
        module._parameters[name] = nn.Parameter(t, requires_grad=False)
