"""Model families as records (models/family.py, models/registry.py) and the shape facts (models/shape.py).

Adding a family must touch its own file, one registry line and tests: the rest of models/ names
no architecture, every registered key map fills every parameter its builder makes, and the shape
facts are counted from the built blocks (no per-family cases), K and V head dims apart.
"""

import io
import tokenize
from pathlib import Path

import pytest
import torch
from torch import nn

import ctxprobe.models
from ctxprobe.models import registry
from ctxprobe.models.blocks import experts_count
from ctxprobe.models.config import from_hf
from ctxprobe.models.keymap import compile_keys, map_key, stored_key
from ctxprobe.models.loader import build_empty, key_map
from ctxprobe.models.shape import shape_of
from tiny_models import PRESETS

MODELS = Path(ctxprobe.models.__file__).parent
ARCH_OF = {"llama": "LlamaForCausalLM", "mixtral": "MixtralForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
           "llama4": "Llama4ForCausalLM", "gpt_oss": "GptOssForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM"}


def hf_config(arch: str) -> dict:
    if arch == "Llama4ForConditionalGeneration":   # the text model nested under text_config
        return {"architectures": [arch], "text_config": dict(PRESETS["llama4"])}
    family = registry.family_of(arch).name
    return dict(PRESETS[family], architectures=[arch])


def string_literals(path: Path) -> list[tuple[int, str]]:
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return [(t.start[0], t.string) for t in tokens if t.type == tokenize.STRING]


def test_only_family_files_and_the_registry_name_an_architecture_or_family():
    family_files = {Path(f.build.__code__.co_filename).name for f in registry.FAMILIES}
    assert family_files == {"llama.py", "llama4.py", "mixtral.py", "qwen3_moe.py", "gpt_oss.py", "deepseek_v3.py"}
    names = set(registry.ARCHITECTURES) | {f.name for f in registry.FAMILIES}
    # tiny.py writes test checkpoints with transformers' classes (it leaves the package in S3f).
    allowed = family_files | {"registry.py", "tiny.py"}
    found = []
    for path in sorted(MODELS.glob("*.py")):
        if path.name in allowed:
            continue
        for line, literal in string_literals(path):
            found += [f"{path.name}:{line}: {name}" for name in names
                      if literal.strip("\"'") == name or (name in literal and name in registry.ARCHITECTURES)]
    assert not found, "family knowledge outside the family files:\n" + "\n".join(found)


def test_registry_lists_each_architecture_once_in_its_family():
    assert len(registry.ARCHITECTURES) == len(set(registry.ARCHITECTURES)) == 7
    for f in registry.FAMILIES:
        for arch in f.architectures:
            assert registry.family_of(arch) is f
            assert from_hf(hf_config(arch)).family == f.name
        assert f.nested_text <= set(f.architectures)


@pytest.mark.parametrize("arch", registry.ARCHITECTURES)
def test_every_key_map_fills_every_parameter_and_reads_back(arch):
    cfg = from_hf(hf_config(arch))
    keys = key_map(cfg)
    rules = compile_keys(keys)
    for name, p in build_empty(cfg).named_parameters():
        stacked = ".experts.w" in name          # Mixtral's, Qwen3's and DeepSeek's, filled one expert at a time
        for expert in range(p.shape[0]) if stacked else [None]:
            stored = stored_key(keys, name, expert)
            assert map_key(rules, stored) == (name, expert), (arch, name, expert, stored)
    if arch == "Llama4ForConditionalGeneration":
        assert map_key(rules, "vision_model.patch_embedding.linear.weight") is None
        assert map_key(rules, "model.layers.0.self_attn.q_proj.weight") is False   # the text model is nested


def test_default_rope_theta_and_nested_text_come_from_the_record():
    plain = dict(PRESETS["llama4"])
    plain.pop("rope_parameters")
    assert from_hf(dict(plain, architectures=["Llama4ForCausalLM"])).rope_theta == 500000.0
    assert from_hf(dict(plain, architectures=["LlamaForCausalLM"])).rope_theta == 10000.0
    nested = from_hf({"architectures": ["Llama4ForConditionalGeneration"], "text_config": plain})
    assert (nested.n_layers, nested.chunk_size, nested.rope_layers) == (4, 64, [True, True, True, False])


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("family", ["llama", "llama4", "mixtral", "qwen3_moe"])
def test_shape_facts_match_the_built_model(family):
    cfg = from_hf(hf_config(ARCH_OF[family]))
    model = build_empty(cfg)
    shape = shape_of(cfg, model)
    assert (shape.k_head_dim, shape.v_head_dim) == (cfg.head_dim, cfg.head_dim) == (16, 16)
    assert shape.kv_values_per_token == 2 * cfg.n_kv_heads * cfg.head_dim == 64
    assert shape.params_total == _numel(model)          # untied: embedding and head both count
    for lay, block in zip(shape.layers, model.blocks):
        assert lay.params == _numel(block)
        experts = getattr(block.ffn, "experts", None)
        if experts is None:
            assert not lay.moe and lay.active_params == lay.params
        else:
            n, k = experts_count(experts), block.ffn.top_k
            assert lay.moe and lay.params - lay.active_params == _numel(experts) * (n - k) // n > 0
    kinds = [(lay.kind, lay.span, lay.rope, lay.moe, lay.ffn_width) for lay in shape.layers]
    assert kinds == {
        "llama": [("global", None, True, False, 96)] * 2,
        "mixtral": [("window", 100, True, True, 48)] * 2,
        "qwen3_moe": [("global", None, True, True, 32), ("global", None, True, False, 96),
                      ("global", None, True, True, 32)],
        # MoE layers: shared expert F=32 beside fused experts whose gate_up is 2F wide
        "llama4": [("chunked", 64, True, False, 96), ("chunked", 64, True, True, 64),
                   ("chunked", 64, True, False, 96), ("global", None, False, True, 64)],
    }[family]
    assert [lay.kv_tokens(1000) for lay in shape.layers][-1] == (1000 if family != "mixtral" else 100)


def test_tied_head_counts_once():
    cfg = from_hf(dict(PRESETS["llama"], architectures=["LlamaForCausalLM"], tie_word_embeddings=True))
    model = build_empty(cfg)
    assert shape_of(cfg, model).params_total == _numel(model) - cfg.vocab_size * cfg.dim


def test_value_head_dim_is_read_apart_from_the_key_head_dim():
    """A family whose V heads are narrower than its QK heads (multi-head latent attention) gets
    KV bytes Hkv * (Dk + Dv), not 2 * Hkv * Dk."""
    cfg = from_hf(dict(PRESETS["llama"], architectures=["LlamaForCausalLM"]))
    model = build_empty(cfg)
    with torch.device("meta"):
        for block in model.blocks:
            block.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * 12, bias=False)
    shape = shape_of(cfg, model)
    assert (shape.k_head_dim, shape.v_head_dim) == (16, 12)
    assert shape.kv_values_per_token == cfg.n_kv_heads * (16 + 12)


def test_shape_facts_of_windows_and_latent_attention():
    """gpt-oss: windows on alternate layers, K = V heads; DeepSeek-V3: one cached head, K = latent +
    rope key, V = the latent (inside K), dense first layer."""
    oss = shape_of(from_hf(hf_config("GptOssForCausalLM")))
    assert [(lay.kind, lay.span, lay.moe, lay.ffn_width) for lay in oss.layers] == [
        ("window", 50, True, 64), ("global", None, True, 64), ("window", 50, True, 64)]
    assert (oss.n_kv_heads, oss.k_head_dim, oss.v_head_dim, oss.values_in_keys) == (2, 16, 16, False)
    assert oss.latent_values_per_token == oss.kv_values_per_token == 64
    ds = shape_of(from_hf(hf_config("DeepseekV3ForCausalLM")))
    assert [(lay.kind, lay.moe, lay.ffn_width) for lay in ds.layers] == [
        ("global", False, 96), ("global", True, 32), ("global", True, 32)]
    assert (ds.n_kv_heads, ds.k_head_dim, ds.v_head_dim, ds.values_in_keys) == (1, 40, 32, True)
    assert (ds.kv_values_per_token, ds.latent_values_per_token) == (72, 40)
