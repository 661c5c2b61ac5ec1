"""The shape facts a memory planner and `ctxprobe inspect` need, counted on a meta-device model.

No family is named here: a layer's kind and span come from the config's attention mask, the
parameter counts and feed-forward widths from the built blocks, the cached K and V heads and head
dims from the block (n_kv_heads, head_dim, and v_head_dim or the v projection's width). A new
family's facts follow from its builder.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ctxprobe.models.blocks import experts_count
from ctxprobe.models.loader import build_empty


@dataclass(frozen=True)
class LayerFacts:
    kind: str                  # "global" | "chunked" | "window"
    span: int | None           # tokens a chunked or window layer attends over (None: global)
    rope: bool                 # rotary positions (False: NoPE)
    moe: bool                  # a mixture-of-experts feed-forward
    params: int                # every parameter of the block
    active_params: int         # less the experts a token skips (top_k of n_experts run)
    ffn_width: int             # widest feed-forward activation per token (Llama 4's gate_up: 2F)

    def kv_tokens(self, length: int) -> int:
        """Tokens of KV this layer keeps to answer a query at position `length`-1."""
        return min(length, self.span) if self.span else length


@dataclass(frozen=True)
class ShapeFacts:
    dim: int
    vocab: int
    n_heads: int
    n_kv_heads: int
    k_head_dim: int            # Dk: query/key head dim
    v_head_dim: int            # Dv: value head dim (DeepSeek's MLA: the latent, narrower than K)
    end_params: int            # embedding, final norm and head (a tied head counted once)
    layers: tuple[LayerFacts, ...]
    values_in_keys: bool = False  # V is K's first Dv columns (MLA's latent): K alone holds both

    @property
    def kv_values_per_token(self) -> int:
        """K and V numbers one layer keeps per token with K and V stored apart (the runner's KV
        today): Hkv * (Dk + Dv); times the dtype's bytes."""
        return self.n_kv_heads * (self.k_head_dim + self.v_head_dim)

    @property
    def latent_values_per_token(self) -> int:
        """Numbers per token and layer of a cache that keeps V inside K when it can (attention.KVStore
        values_in_keys; MLA: Hkv * Dk = kv_lora_rank + qk_rope_head_dim); otherwise kv_values_per_token."""
        return self.n_kv_heads * self.k_head_dim if self.values_in_keys else self.kv_values_per_token

    @property
    def params_total(self) -> int:
        return self.end_params + sum(lay.params for lay in self.layers)

    @property
    def params_active(self) -> int:
        return self.end_params + sum(lay.active_params for lay in self.layers)

    @property
    def ffn_width(self) -> int:
        return max((lay.ffn_width for lay in self.layers), default=0)


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _layer(cfg, i: int, block: nn.Module) -> LayerFacts:
    mask = cfg.layer_mask(i)
    kind = "chunked" if mask["chunk_size"] else "window" if mask["window"] else "global"
    params, idle = _numel(block), 0
    experts = getattr(block.ffn, "experts", None)
    if experts is not None:
        n = experts_count(experts)
        idle = _numel(experts) * (n - block.ffn.top_k) // n
    width = max((getattr(m, "width", 0) for m in block.ffn.modules()), default=0)
    return LayerFacts(kind=kind, span=mask["chunk_size"] or mask["window"], rope=bool(cfg.rope_layers[i]),
                      moe=experts is not None, params=params, active_params=params - idle, ffn_width=width)


def shape_of(cfg, model: nn.Module | None = None) -> ShapeFacts:
    """The facts of ModelConfig `cfg` (model: cfg's model already built, on any device)."""
    model = build_empty(cfg) if model is None else model
    first = model.blocks[0]
    tied = cfg.vocab_size * cfg.dim if cfg.tie_embeddings else 0
    layers = tuple(_layer(cfg, i, b) for i, b in enumerate(model.blocks))
    Hkv = first.n_kv_heads
    v_head_dim = getattr(first, "v_head_dim", None) or first.wv.out_features // Hkv
    return ShapeFacts(dim=cfg.dim, vocab=cfg.vocab_size, n_heads=cfg.n_heads, n_kv_heads=Hkv,
                      k_head_dim=first.head_dim, v_head_dim=v_head_dim,
                      end_params=_numel(model) - tied - sum(lay.params for lay in layers), layers=layers,
                      values_in_keys=bool(getattr(first, "values_in_keys", False)))
