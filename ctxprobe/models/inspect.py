"""What a checkpoint is and what a given context length will cost, without loading a weight.

Reads config.json and the safetensors headers, checks every key and shape (the same checks as
load_model), then counts on a meta-device model. Memory per tier follows the layer-by-layer plan:
the device holds one layer's weights and that layer's KV; the host holds the hidden states of
every token between layers (and, if kept for reuse, every layer's KV); weights rest on disk.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ctxprobe.models.loader import build_empty, key_map, parse_dtype, plan_copies, read_config, read_headers
from ctxprobe.models.shape import ShapeFacts, shape_of
from ctxprobe.units import fmt_bytes, human_count


def layer_kinds(cfg, shape: ShapeFacts) -> dict[str, int]:
    """{"attention: ...": n, "feed-forward: ...": n} counts of layers by kind."""
    kinds: dict[str, int] = {}  # attention kinds first, then feed-forward kinds
    for lay in shape.layers:
        span = (f"local, chunks of {lay.span}" if lay.kind == "chunked"
                else f"local, window {lay.span}" if lay.kind == "window" else "global")
        attn = f"attention: {span}, {'RoPE' if lay.rope else 'NoPE'}"
        ffn = f"feed-forward: MoE {cfg.top_k} of {cfg.n_experts} experts" if lay.moe else "feed-forward: dense"
        for k in (attn, ffn):
            kinds[k] = kinds.get(k, 0) + 1
    return dict(sorted(kinds.items(), key=lambda kv: not kv[0].startswith("attention")))


def describe(path: str | Path, length: int | None = None, dtype=None) -> dict:
    """A dict of facts about a checkpoint dir; memory figures in bytes for `length` tokens."""
    cfg = read_config(path)
    headers = read_headers(Path(path), cfg.quantization)
    plan_copies(headers, build_empty(cfg), cfg, key_map(cfg))   # raises on any bad key or shape
    return dict(path=str(path), shards=len(headers), **describe_config(cfg, length=length, dtype=dtype))


def describe_config(cfg, length: int | None = None, dtype=None) -> dict:
    """The facts that follow from the config alone (counted on a meta-device model)."""
    shape = shape_of(cfg)
    dt = parse_dtype(dtype or cfg.dtype)
    elem = torch.empty(0, dtype=dt).element_size()
    total = shape.params_total
    kv_layer = shape.kv_values_per_token * elem                  # K + V bytes per token per layer
    n_global = sum(lay.kind == "global" for lay in shape.layers)
    layer_bytes = [lay.params * elem for lay in shape.layers]
    facts = dict(
        arch=cfg.arch, family=cfg.family, dtype=str(dt).removeprefix("torch."),
        layers=cfg.n_layers, dim=cfg.dim, heads=cfg.n_heads, kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
        vocab=cfg.vocab_size, params_total=total, params_active=shape.params_active,
        layer_kinds=layer_kinds(cfg, shape),
        kv_bytes_per_token_layer=kv_layer,
        kv_bytes_per_token_global=kv_layer * n_global,
        kv_bytes_per_token_local=kv_layer * (cfg.n_layers - n_global),
        # MLA: the latent and rope key alone (V is inside K), what a latent-aware cache holds
        kv_latent_bytes_per_token=shape.latent_values_per_token * elem * cfg.n_layers,
        weight_bytes=total * elem, largest_layer_weight_bytes=max(layer_bytes, default=0),
    )
    if length is not None:
        kv_layers = [kv_layer * lay.kv_tokens(length) for lay in shape.layers]
        hidden = length * cfg.dim * elem
        facts["length"] = length
        facts["memory"] = {
            "device (one layer at a time)": max(layer_bytes) + max(kv_layers),
            "host (hidden states of every token)": hidden,
            "host (KV of every layer, if kept)": sum(kv_layers),
            "disk (weights)": total * elem,
        }
        facts["kv_bytes_largest_layer"] = max(kv_layers)
    return facts


def format_facts(f: dict) -> str:
    lines = [
        f"{f['path']}: {f['arch']} ({f['dtype']}, {f['shards']} shard(s))",
        f"  layers {f['layers']}, dim {f['dim']}, heads {f['heads']} (kv {f['kv_heads']}) x {f['head_dim']}, "
        f"vocab {f['vocab']}",
        f"  parameters: {human_count(f['params_total'])} total, {human_count(f['params_active'])} active per token",
        "  layers by kind:",
        *[f"    {n:3d}  {kind}" for kind, n in f["layer_kinds"].items()],
        f"  KV per token: {fmt_bytes(f['kv_bytes_per_token_global'])} on global layers, "
        f"{fmt_bytes(f['kv_bytes_per_token_local'])} on local layers "
        f"({fmt_bytes(f['kv_bytes_per_token_layer'])} per layer)",
    ]
    if f["kv_latent_bytes_per_token"] < f["kv_bytes_per_token_global"] + f["kv_bytes_per_token_local"]:
        lines.append(f"  KV per token as a latent (V inside K, multi-head latent attention): "
                     f"{fmt_bytes(f['kv_latent_bytes_per_token'])}; the runner keeps K and V apart today")
    if "memory" in f:
        lines.append(f"  memory for {f['length']:,} tokens:")
        lines += [f"    {fmt_bytes(v):>10}  {tier}" for tier, v in f["memory"].items()]
    return "\n".join(lines)
