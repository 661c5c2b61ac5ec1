"""Tiny random HF checkpoints for the tests (needs transformers, a test-only dependency; not installed).

    path, hf_model = save_tiny(tmp_path / "llama", "llama")

Weights are re-drawn at a scale where every feature moves the logits (HF's default init,
std 0.02, leaves attention nearly uniform), then saved in several safetensors shards.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

# Small shared dims: hidden 64, 4 query heads, 2 key/value heads of 16, vocab 300.
_BASE = dict(vocab_size=300, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)

PRESETS = {
    "llama": dict(_BASE, intermediate_size=96, num_hidden_layers=2,
                  rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                                       high_freq_factor=4.0, original_max_position_embeddings=64)),
    "mixtral": dict(_BASE, intermediate_size=48, num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2,
                    sliding_window=100, rope_theta=10000.0),
    "qwen3_moe": dict(_BASE, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3, num_experts=6,
                      num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[1],
                      rope_theta=10000.0),
    "llama4": dict(_BASE, intermediate_size=32, intermediate_size_mlp=96, num_hidden_layers=4, num_local_experts=4,
                   num_experts_per_tok=1, interleave_moe_layer_step=2, use_qk_norm=True, attention_chunk_size=64,
                   attn_temperature_tuning=True, floor_scale=16, attn_scale=0.1, no_rope_layer_interval=4,
                   rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                                        high_freq_factor=4.0, original_max_position_embeddings=64)),
    # windows of 50 < prompt on layers 0 and 2, sinks, YaRN stretched past 64 positions
    "gpt_oss": dict(_BASE, intermediate_size=32, num_hidden_layers=3, num_local_experts=4, num_experts_per_tok=2,
                    sliding_window=50, swiglu_limit=1.5, max_position_embeddings=256,
                    rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=4.0, beta_fast=32.0,
                                         beta_slow=1.0, truncate=False, original_max_position_embeddings=64)),
    # MLA (R 32, P 8, N 16, V 12), 8 experts in 4 groups (2 kept), layer 0 dense, YaRN with mscale
    "deepseek_v3": dict(_BASE, num_key_value_heads=4, head_dim=8, intermediate_size=96, moe_intermediate_size=32,
                        num_hidden_layers=3, n_routed_experts=8, n_group=4, topk_group=2, num_experts_per_tok=2,
                        n_shared_experts=1, first_k_dense_replace=1, routed_scaling_factor=2.5, kv_lora_rank=32,
                        max_position_embeddings=256,
                        q_lora_rank=48, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12,
                        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, mscale=1.0,
                                             mscale_all_dim=0.8, original_max_position_embeddings=64)),
}


def hf_classes(family: str):
    import transformers as tf

    return {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "mixtral": (tf.MixtralConfig, tf.MixtralForCausalLM),
            "qwen3_moe": (tf.Qwen3MoeConfig, tf.Qwen3MoeForCausalLM),
            "llama4": (tf.Llama4TextConfig, tf.Llama4ForCausalLM),
            "gpt_oss": (tf.GptOssConfig, tf.GptOssForCausalLM),
            "deepseek_v3": (tf.DeepseekV3Config, tf.DeepseekV3ForCausalLM)}[family]


@torch.no_grad()
def randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights ~ N(0, 1/fan_in) (so activations stay O(1)); norm weights ~ 1 + N(0, 0.1); gpt-oss's
    sinks ~ N(2, 1) and DeepSeek's expert-choice bias ~ N(0, 0.3), so that each moves the result."""
    g = torch.Generator().manual_seed(seed)
    in_major = any(f in type(model).__name__.lower() for f in ("llama4", "gptoss"))   # experts [E, in, out]
    for name, p in model.named_parameters():
        if name.endswith("sinks"):
            p.copy_(2.0 + torch.randn(p.shape, generator=g))
        elif p.dim() == 1:
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        else:
            fan_in = p.shape[-2] if "experts" in name and in_major and "bias" not in name else p.shape[-1]
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.copy_(0.3 * torch.randn(b.shape, generator=g))


def _multimodal_config(text_overrides: dict):
    """A Llama 4 image+text config with the tiny text model and the smallest vision tower."""
    import transformers as tf

    text = tf.Llama4TextConfig(**{**PRESETS["llama4"], **text_overrides})
    vision = tf.Llama4VisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                   vision_output_dim=32, projector_input_dim=32, projector_output_dim=32,
                                   image_size=28, patch_size=14, pixel_shuffle_ratio=0.5)
    return tf.Llama4Config(text_config=text.to_dict(), vision_config=vision.to_dict())


def save_tiny(path: str | Path, family: str, *, seed: int = 0, max_shard_size: str = "200KB", **overrides):
    """Build a tiny random model with transformers (eager attention) and save it in several shards.

    family: a PRESETS name, or "llama4_multimodal" (Llama4ForConditionalGeneration).
    -> (path, hf model in float32 eval mode)
    """
    if family == "llama4_multimodal":
        import transformers as tf

        config, model_cls = _multimodal_config(overrides), tf.Llama4ForConditionalGeneration
    else:
        config_cls, model_cls = hf_classes(family)
        config = config_cls(**{**PRESETS[family], **overrides})
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(config).float().eval()
    randomise(model, seed)
    path = Path(path)
    model.save_pretrained(path, max_shard_size=max_shard_size)
    return path, model


# --- shared by the parity tests (tests/test_models_*.py) ---

PROMPT_LEN = 230    # longer than every preset's window, chunk and original rope context


def prompt(n=PROMPT_LEN, vocab=300, seed=1):
    """A seeded random prompt: token ids [n]."""
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def hf_logits(hf, ids):
    """transformers' float32 logits [T, V] for ids [T] (a Llama 4 image+text model: its text model)."""
    with torch.no_grad():
        if hasattr(hf, "language_model"):
            return hf.language_model(ids[None]).logits[0]
        return hf(ids[None]).logits[0]


def checkpoint_cache(tmp_path_factory, case_args):
    """get(case) -> save_tiny's (path, hf model), built once per case; case_args(case) -> (family, overrides)."""
    built = {}

    def get(case):
        if case not in built:
            family, overrides = case_args(case)
            built[case] = save_tiny(tmp_path_factory.mktemp(case), family, **overrides)
        return built[case]

    return get
