"""`ctxprobe inspect`: parameters, layers by kind, KV bytes per token and memory per tier."""

import json

import pytest

from ctxprobe.cli import main
from ctxprobe.models.config import from_hf
from ctxprobe.models.inspect import describe_config

pytest.importorskip("transformers")

from tiny_models import save_tiny  # noqa: E402


@pytest.fixture(scope="module")
def llama4(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("llama4"), "llama4")


def test_inspect_text(runner, llama4):
    path, _ = llama4
    result = runner.invoke(main, ["inspect", str(path), "--length", "1k"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Llama4ForCausalLM" in out and "active per token" in out
    assert "3  attention: local, chunks of 64, RoPE" in out and "1  attention: global, NoPE" in out
    assert "2  feed-forward: MoE 1 of 4 experts" in out and "memory for 1,024 tokens" in out


def test_inspect_json_counts(runner, llama4):
    path, hf = llama4
    result = runner.invoke(main, ["inspect", str(path), "--length", "1000", "--json"])
    assert result.exit_code == 0, result.output
    f = json.loads(result.output)
    assert f["params_total"] == sum(p.numel() for p in hf.parameters())
    # 2 MoE layers x 4 experts (gate_up 64x64 + down 32x64 each), 3 of 4 idle per token
    assert f["params_total"] - f["params_active"] == 2 * 3 * (64 * 64 + 32 * 64)
    per_layer = 2 * 2 * 16 * 4                        # K+V, 2 kv heads, head dim 16, float32
    assert f["kv_bytes_per_token_layer"] == per_layer
    assert f["kv_bytes_per_token_global"] == per_layer and f["kv_bytes_per_token_local"] == 3 * per_layer
    assert f["memory"]["host (KV of every layer, if kept)"] == per_layer * (1000 + 3 * 64)
    assert f["memory"]["host (hidden states of every token)"] == 1000 * 64 * 4


def test_scout_shaped_config_matches_the_design_numbers():
    """Llama 4 Scout: ~109B total / 17B active, 4 KiB K+V per token per layer, 12 global layers."""
    scout = {"architectures": ["Llama4ForConditionalGeneration"], "text_config": dict(
        hidden_size=5120, intermediate_size=8192, intermediate_size_mlp=16384, num_hidden_layers=48,
        num_attention_heads=40, num_key_value_heads=8, head_dim=128, vocab_size=202048, num_local_experts=16,
        num_experts_per_tok=1, interleave_moe_layer_step=1, rms_norm_eps=1e-5, attention_chunk_size=8192,
        rope_theta=500000.0, torch_dtype="bfloat16",
        rope_scaling=dict(rope_type="llama3", factor=16.0, low_freq_factor=1.0, high_freq_factor=1.0,
                          original_max_position_embeddings=8192))}
    f = describe_config(from_hf(scout), length=10 * 2**20)
    assert 105e9 < f["params_total"] < 110e9 and 16.5e9 < f["params_active"] < 17.5e9
    assert f["kv_bytes_per_token_layer"] == 4096 and f["kv_bytes_per_token_global"] == 48 * 1024
    assert f["kv_bytes_largest_layer"] == 40 * 2**30           # one global layer at 10M tokens
    assert f["layer_kinds"]["attention: global, NoPE"] == 12


def test_inspect_help_has_example(runner):
    result = runner.invoke(main, ["inspect", "--help"])
    assert result.exit_code == 0 and "Example: ctxprobe inspect" in result.output


def test_budgets_without_a_length_are_refused(tmp_path):
    from click.testing import CliRunner

    from ctxprobe.builtin import construct
    from ctxprobe.cli import main

    model = construct.__file__.replace("construct.py", "model")
    result = CliRunner().invoke(main, ["inspect", model, "--gpu-memory", "80GiB"])
    assert result.exit_code == 2 and "add --length" in result.output


@pytest.mark.parametrize("length", ["lots", "0"])
def test_a_bad_length_is_one_line_naming_the_flag(runner, length):
    from ctxprobe.builtin import construct

    model = construct.__file__.replace("construct.py", "model")
    result = runner.invoke(main, ["inspect", model, "--length", length])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert result.output.startswith(f"error: --length: bad length '{length}'"), result.output
