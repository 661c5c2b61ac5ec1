"""Our model config: one dataclass for every supported family, read from an HF config.json.

HF writes the same facts under different names per family and per transformers version
(`rope_theta` + `rope_scaling` before v5, `rope_parameters` after; Llama 4 multimodal nests the
text model under `text_config`). `from_hf` reads the fields every family shares into one shape
and asks the family's record (registry.py) for the rest.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from ctxprobe.errors import UserError
from ctxprobe.models.quantized import read_quantization
from ctxprobe.models.registry import ARCHITECTURES, family_of


@dataclass
class ModelConfig:
    arch: str                       # the HF architecture name, e.g. "MixtralForCausalLM"
    vocab_size: int
    dim: int                        # hidden size D
    n_layers: int
    n_heads: int                    # query heads Hq
    n_kv_heads: int                 # key/value heads Hkv
    head_dim: int                   # Dk of the attention's cached keys (and queries)
    ffn_dim: int                    # dense MLP hidden size
    norm_eps: float
    rope_theta: float
    # llama3: factor, low/high_freq_factor, original_max_position_embeddings; yarn: rope_type "yarn",
    # factor, original_max_position_embeddings, truncate, optional beta_fast/slow, mscale(_all_dim)
    rope_scaling: dict | None = None
    tie_embeddings: bool = False
    max_position: int = 0
    v_head_dim: int | None = None             # Dv of the cached values; None: head_dim (MLA: the latent)
    # Mixture of experts (0 experts: dense model)
    n_experts: int = 0
    top_k: int = 0
    moe_ffn_dim: int = 0
    norm_topk_prob: bool = True
    moe_layers: list[bool] = field(default_factory=list)   # per layer: MoE feed-forward?
    # Attention pattern, per layer
    rope_layers: list[bool] = field(default_factory=list)  # per layer: rotary positions? (False: NoPE)
    chunk_size: int | None = None             # Llama 4 local layers attend inside aligned chunks
    chunked_layers: list[bool] = field(default_factory=list)
    sliding_window: int | None = None
    window_layers: list[bool] = field(default_factory=list)  # per layer: is sliding_window applied? (default all)
    attention_bias: bool = False              # q/k/v/o projections carry biases (gpt-oss)
    # Llama 4 extras
    l2_qk_norm: bool = False                  # weightless L2 norm of q, k after RoPE (RoPE layers only)
    attn_temperature: bool = False            # NoPE layers scale q by log1p(floor((pos+1)/floor_scale))*attn_scale+1
    floor_scale: float = 8192.0
    attn_scale: float = 0.1
    quantization: dict | None = None          # stored weights' quantization, dequantized at load (quantized.py)
    # A family's own settings that no shared code reads (gpt_oss.Settings, deepseek_v3.Settings).
    family_settings: object = None
    dtype: str = "float32"                    # the checkpoint's stored dtype
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)

    def __post_init__(self):
        n = self.n_layers
        self.moe_layers = self.moe_layers or [False] * n
        self.rope_layers = self.rope_layers or [True] * n
        self.chunked_layers = self.chunked_layers or [False] * n
        self.window_layers = self.window_layers or [True] * n
        self.v_head_dim = self.v_head_dim or self.head_dim
        assert len(self.moe_layers) == len(self.rope_layers) == len(self.chunked_layers) == len(self.window_layers) == n

    @property
    def family(self) -> str:
        return family_of(self.arch).name

    def layer_mask(self, i: int) -> dict:
        """What attention.attend needs for layer i: causal, chunk_size, window."""
        return dict(causal=True, chunk_size=self.chunk_size if self.chunked_layers[i] else None,
                    window=self.sliding_window if self.window_layers[i] else None)


# What each config.json field must hold when present (absent or null: the readers' defaults).
# A wrong value here would otherwise surface deep in model building as a traceback, or not at
# all ("tie_word_embeddings": "false" is truthy).
MAX_LAYERS = 10_000   # no model comes near; a typo would build that many blocks before any check
_WHOLE = {"vocab_size": 1, "hidden_size": 1, "num_hidden_layers": 1, "num_attention_heads": 1,
          "num_key_value_heads": 1, "head_dim": 1, "intermediate_size": 1, "moe_intermediate_size": 1,
          "intermediate_size_mlp": 1, "num_experts_per_tok": 1, "num_local_experts": 0, "num_experts": 0,
          "max_position_embeddings": 1, "sliding_window": 1, "attention_chunk_size": 1,
          "decoder_sparse_step": 1, "interleave_moe_layer_step": 1, "no_rope_layer_interval": 1,
          "bos_token_id": 0, "kv_lora_rank": 1, "q_lora_rank": 1, "qk_rope_head_dim": 1, "qk_nope_head_dim": 0,
          "v_head_dim": 1, "n_routed_experts": 1, "n_shared_experts": 0, "n_group": 1, "topk_group": 1,
          "first_k_dense_replace": 0, "num_nextn_predict_layers": 0}
_POSITIVE = ("rms_norm_eps", "rope_theta", "floor_scale", "routed_scaling_factor", "swiglu_alpha", "swiglu_limit")
_FINITE = ("attn_scale",)
_FLAGS = ("tie_word_embeddings", "use_qk_norm", "attn_temperature_tuning", "norm_topk_prob",
          "use_sliding_window", "attention_bias", "rope_interleave")
_WHOLE_LISTS = {"mlp_only_layers": 0, "moe_layers": 0, "no_rope_layers": 0, "eos_token_id": 0}


def _bad(where: str, key: str, want: str, value) -> UserError:
    return UserError(f"{where}: '{key}' must be {want}, found {json.dumps(value, default=str)}; "
                     "fix config.json")


def _whole(value, key: str, lo: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise _bad(where, key, f"a whole number >= {lo}", value)
    return value


def _real(value, key: str, where: str, positive: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        raise _bad(where, key, "a number above 0" if positive else "a finite number", value)
    return float(value)


def check_fields(cfg: dict, where: str) -> None:
    """A UserError naming the first field of cfg with a wrong type or an impossible value."""
    for key, lo in _WHOLE.items():
        if cfg.get(key) is not None:
            _whole(cfg[key], key, lo, where)
    for key in _POSITIVE + _FINITE:
        if cfg.get(key) is not None:
            _real(cfg[key], key, where, positive=key in _POSITIVE)
    for key in _FLAGS:   # a number is read as its truth (Scout's config says attn_temperature_tuning: 4)
        if cfg.get(key) is not None and not isinstance(cfg[key], (bool, int, float)):
            raise _bad(where, key, "true or false", cfg[key])
    for key, lo in _WHOLE_LISTS.items():
        value = cfg.get(key)
        if value is None or (key == "eos_token_id" and not isinstance(value, list)):
            continue
        if not isinstance(value, list):
            raise _bad(where, key, "a list of whole numbers", value)
        for item in value:
            _whole(item, key, lo, where)
    if cfg.get("eos_token_id") is not None and not isinstance(cfg["eos_token_id"], list):
        _whole(cfg["eos_token_id"], "eos_token_id", 0, where)
    if cfg.get("layer_types") is not None and (not isinstance(cfg["layer_types"], list) or not all(
            isinstance(t, str) for t in cfg["layer_types"])):
        raise _bad(where, "layer_types", "a list of names", cfg["layer_types"])
    for key in ("rope_parameters", "rope_scaling"):
        if cfg.get(key) is not None and not isinstance(cfg[key], dict):
            raise _bad(where, key, "an object of rope settings", cfg[key])
    if (cfg.get("num_hidden_layers") or 0) > MAX_LAYERS:
        raise _bad(where, "num_hidden_layers", f"at most {MAX_LAYERS}", cfg["num_hidden_layers"])
    heads, kv_heads = cfg.get("num_attention_heads"), cfg.get("num_key_value_heads")
    if heads and kv_heads and heads % kv_heads:
        raise UserError(f"{where}: 'num_attention_heads' ({heads}) must be a multiple of "
                        f"'num_key_value_heads' ({kv_heads}); fix config.json")


def _require(cfg: dict, key: str, where: str):
    if key not in cfg or cfg[key] is None:
        kind = cfg.get("model_type", "HF")
        raise UserError(f"{where}: config.json has no '{key}'; is this a complete {kind} config?")
    return cfg[key]


def _rope(cfg: dict, default_theta: float, where: str = "config.json") -> tuple[float, dict | None]:
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = params.get("rope_theta", cfg.get("rope_theta", default_theta))
    theta = _real(theta, "rope_theta", where, positive=True)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind in (None, "default"):
        return theta, None
    if kind == "yarn":
        return theta, _yarn(params, cfg, where)
    if kind != "llama3":
        raise UserError(f"config.json: rope type '{kind}' is not supported; supported: default, llama3, yarn")
    params.setdefault("original_max_position_embeddings", cfg.get("max_position_embeddings"))
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in keys if params.get(k) is None]
    if missing:
        raise UserError(f"config.json: llama3 rope scaling needs {', '.join(missing)}; is the config complete?")
    scaling = {k: _real(params[k], k, where, positive=True) for k in keys}
    return theta, scaling


_YARN_OPTIONAL = ("beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor")


def _yarn(params: dict, cfg: dict, where: str) -> dict:
    """YaRN settings (models/rope.py reads them); factor defaults to max / original positions, as in HF."""
    old = params.get("original_max_position_embeddings")
    if old is None:
        raise UserError(f"{where}: yarn rope scaling needs original_max_position_embeddings; is the config complete?")
    old = _real(old, "original_max_position_embeddings", where, positive=True)
    factor = params.get("factor")
    if factor is None:
        factor = _whole(cfg.get("max_position_embeddings"), "max_position_embeddings", 1, where) / old
    scaling = dict(rope_type="yarn", factor=_real(factor, "factor", where, positive=True),
                   original_max_position_embeddings=old, truncate=bool(params.get("truncate", True)))
    for k in _YARN_OPTIONAL:
        if params.get(k) is not None:
            scaling[k] = _real(params[k], k, where, positive=False)
    return scaling


def _eos(cfg: dict) -> list[int]:
    eos = cfg.get("eos_token_id")
    return [] if eos is None else list(eos) if isinstance(eos, list) else [int(eos)]


def from_hf(cfg: dict, where: str = "config.json") -> ModelConfig:
    """Read an HF config.json dict (already parsed) into a ModelConfig."""
    if not isinstance(cfg, dict):
        raise UserError(f"{where}: expected a JSON object of model settings, found {type(cfg).__name__}")
    archs = cfg.get("architectures") or []
    arch = next((a for a in archs if a in ARCHITECTURES), None)
    if arch is None:
        raise UserError(f"{where}: architecture {archs or cfg.get('model_type')} is not supported; "
                        f"supported: {', '.join(ARCHITECTURES)}")
    family = family_of(arch)
    # A multimodal config (Llama 4's) nests the text model's settings under text_config.
    text = (cfg.get("text_config") or cfg) if arch in family.nested_text else cfg
    if not isinstance(text, dict):
        raise _bad(where, "text_config", "an object of model settings", text)
    check_fields(text, where)
    get = lambda k: _require(text, k, where)  # noqa: E731
    n_layers, n_heads, dim = get("num_hidden_layers"), get("num_attention_heads"), get("hidden_size")
    n_kv = text.get("num_key_value_heads") or n_heads
    act = text.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UserError(f"{where}: hidden_act '{act}' is not supported; these families use silu")
    theta, scaling = _rope(text, family.default_rope_theta, where)
    base = dict(arch=arch, vocab_size=get("vocab_size"), dim=dim, n_layers=n_layers, n_heads=n_heads,
                n_kv_heads=n_kv, head_dim=text.get("head_dim") or dim // n_heads,
                ffn_dim=get("intermediate_size"), norm_eps=float(get("rms_norm_eps")),
                rope_theta=theta, rope_scaling=scaling,
                tie_embeddings=bool(text.get("tie_word_embeddings", cfg.get("tie_word_embeddings", False))),
                max_position=int(text.get("max_position_embeddings") or 0),
                dtype=str(cfg.get("dtype") or cfg.get("torch_dtype") or text.get("dtype")
                          or text.get("torch_dtype") or "float32"),
                bos_token_id=text.get("bos_token_id"), eos_token_ids=_eos(text),
                quantization=read_quantization(cfg, where))
    return ModelConfig(**{**base, **family.read_config(_Required(text, where), n_layers)})


class _Required(dict):
    """config[key] for a key a family needs: a UserError naming the key when it is absent."""

    def __init__(self, cfg: dict, where: str):
        super().__init__(cfg)
        self.where = where

    def __getitem__(self, key):
        if self.get(key) is None:
            _require(self, key, self.where)   # raises, naming the key
        return super().__getitem__(key)

