"""gpt-oss: our logits equal transformers' eager implementation (float32, 230-token prompts, max abs
diff <= 1e-4) on tiny random checkpoints written by save_pretrained, with windows of 50 on alternating
layers, sinks, YaRN and the biased router; each feature moves the logits; an MXFP4 checkpoint built
from known float weights loads as those weights."""

import json

import pytest
import torch

pytest.importorskip("transformers")

from ctxprobe.errors import UserError  # noqa: E402
from ctxprobe.models import quantized  # noqa: E402
from tiny_models import checkpoint_cache, hf_logits, prompt  # noqa: E402
from ctxprobe.runner import Settings, generate, load_model, prefill, score, score_reference  # noqa: E402

CASES = {
    # layer_types default: sliding (window 50), full, sliding; YaRN factor 4 over 64 positions
    "default": {},
    "full_first": dict(layer_types=["full_attention", "sliding_attention", "sliding_attention"], sliding_window=20),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return checkpoint_cache(tmp_path_factory, lambda case: ("gpt_oss", CASES[case]))


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(checkpoints, case):
    path, hf = checkpoints(case)
    assert len(list(path.glob("*.safetensors"))) >= 2, "the checkpoint should be sharded"
    model = load_model(path, device="cpu")
    ids = prompt()
    ref, ours = hf_logits(hf, ids), model.logits(ids)
    assert (ours - ref).abs().max().item() <= 1e-4
    assert ref.abs().max().item() > 1.0, "logits too small for the comparison to mean anything"


def test_config_reads_every_feature(checkpoints):
    cfg = load_model(checkpoints("default")[0], device="cpu").config
    assert cfg.family == "gpt_oss" and cfg.attention_bias and cfg.moe_layers == [True] * 3
    assert [cfg.layer_mask(i)["window"] for i in range(3)] == [50, None, 50]
    assert cfg.rope_scaling["rope_type"] == "yarn" and cfg.rope_scaling["truncate"] is False
    assert (cfg.family_settings.swiglu_alpha, cfg.family_settings.swiglu_limit) == (1.702, 1.5)
    other = load_model(checkpoints("full_first")[0], device="cpu").config
    assert [other.layer_mask(i)["window"] for i in range(3)] == [None, 20, 20]


def _turn_off(feature, block):
    if feature == "sinks":
        block.sinks = None
    elif feature == "window":
        block.mask = dict(block.mask, window=None)
    elif feature == "yarn":
        block.rope_gain = 1.0
        block.rope_args = (block.rope_args[0], block.rope_args[1], None)
    elif feature == "router_bias":
        block.ffn.router.bias.zero_()
    elif feature == "clamp":
        block.ffn.experts.limit = 1e9
    elif feature == "attention_bias":
        block.wq.bias.zero_()
        block.wk.bias.zero_()


@pytest.mark.parametrize("feature", ["sinks", "window", "yarn", "router_bias", "clamp", "attention_bias"])
def test_each_feature_changes_the_logits(checkpoints, feature):
    model = load_model(checkpoints("default")[0], device="cpu")
    ids = prompt()
    ref = model.logits(ids)
    for block in model.blocks:
        _turn_off(feature, block)
    assert (model.logits(ids) - ref).abs().max().item() > 1e-2


def test_yarn_frequencies_equal_transformers():
    from transformers import GptOssConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from ctxprobe.models import rope
    from ctxprobe.models.config import from_hf
    from tiny_models import PRESETS

    for truncate in (True, False):
        params = dict(PRESETS["gpt_oss"]["rope_parameters"], truncate=truncate, factor=32.0)
        hf_cfg = GptOssConfig(**dict(PRESETS["gpt_oss"], rope_parameters=params))
        want, want_gain = ROPE_INIT_FUNCTIONS["yarn"](hf_cfg)
        cfg = from_hf(dict(PRESETS["gpt_oss"], rope_parameters=params, architectures=["GptOssForCausalLM"]))
        got = rope.inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        assert torch.allclose(got, want, rtol=1e-6, atol=0)
        assert rope.attention_factor(cfg.rope_scaling) == pytest.approx(want_gain)


# --- MXFP4 -----------------------------------------------------------------------------------------

def mxfp4_encode(w: torch.Tensor):
    """Float [.., I, O] whose every 32-value input block (per output row) is table value x 2^e ->
    (blocks uint8 [.., O, I/32, 16], scales uint8 [.., O, I/32]); the inverse of what the loader does,
    written the slow way (one code lookup per value)."""
    rows = w.transpose(-1, -2).contiguous()                                  # [.., O, I]
    groups = rows.unflatten(-1, (-1, 32))                                    # [.., O, G, 32]
    top = groups.abs().amax(-1).clamp_min(2.0 ** -20)
    exponent = torch.ceil(torch.log2(top / 6.0))                             # so that |v| / 2^e <= 6
    scaled = groups / torch.exp2(exponent)[..., None]
    table = torch.tensor(quantized.FP4_VALUES)
    codes = (scaled[..., None] - table).abs().argmin(-1)                    # exact for representable values
    assert torch.equal(table[codes] * torch.exp2(exponent)[..., None], groups), "not representable"
    codes = codes.to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks, (exponent + 127).to(torch.uint8)


def representable(shape, generator):
    """Random values exactly representable in MXFP4: table values scaled by 2^e per 32-block."""
    table = torch.tensor(quantized.FP4_VALUES)
    *prefix, I, O = shape
    codes = torch.randint(0, 16, (*prefix, O, I), generator=generator)
    codes[..., 0] = 7                                                        # each block reaches 6.0
    e = torch.randint(-5, -1, (*prefix, O, I // 32), generator=generator).float()
    return (table[codes] * torch.exp2(e).repeat_interleave(32, -1)).transpose(-1, -2).contiguous()


def test_mxfp4_dequantizes_known_weights():
    g = torch.Generator().manual_seed(0)
    w = representable((3, 64, 40), g)
    blocks, scales = mxfp4_encode(w)
    assert blocks.shape == (3, 40, 2, 16) and scales.shape == (3, 40, 2)
    assert torch.equal(quantized.dequantize_mxfp4(blocks, scales), w)


def write_mxfp4_checkpoint(src, dst, generator):
    """Copy of checkpoint `src` whose experts' weights are replaced by representable values stored as
    MXFP4 pairs (config.json says so) -> {stored key: the float weight it holds}."""
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    weights, weight_map = {}, {}
    for f in sorted(src.glob("*.safetensors")):
        tensors = load_file(str(f))
        for key in [k for k in tensors if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
            weights[key] = representable(tensors.pop(key).shape, generator)
            tensors[key + "_blocks"], tensors[key + "_scales"] = mxfp4_encode(weights[key])
        save_file(tensors, str(dst / f.name), metadata={"format": "pt"})
        weight_map.update({key: f.name for key in tensors})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": ["router", "self_attn"]}
    (dst / "config.json").write_text(json.dumps(cfg))
    return weights


def test_mxfp4_checkpoint_loads_as_its_float_weights(checkpoints, tmp_path):
    src, hf = checkpoints("default")
    weights = write_mxfp4_checkpoint(src, tmp_path / "mxfp4", torch.Generator().manual_seed(1))
    model = load_model(tmp_path / "mxfp4", device="cpu")
    assert model.config.quantization == {"method": "mxfp4"}
    state = dict(hf.state_dict())
    for key, w in weights.items():
        layer = key.split(".")[2]
        ours = model.blocks[int(layer)].ffn.experts.gate_up if "gate_up" in key else \
            model.blocks[int(layer)].ffn.experts.down
        assert torch.equal(ours, w)
        state[key] = w
    hf.load_state_dict(state)
    ids = prompt()
    assert (model.logits(ids) - hf_logits(hf, ids)).abs().max().item() <= 1e-4
    with pytest.raises(UserError, match="cannot stream from disk"):
        load_model(tmp_path / "mxfp4", device="cpu", weights="disk")


def test_unsupported_quantization_is_refused_by_name(checkpoints, tmp_path):
    import shutil

    src, _ = checkpoints("default")
    dst = tmp_path / "gptq"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="quantization 'gptq' is not supported"):
        load_model(dst, device="cpu")


# --- the streamed runner ---------------------------------------------------------------------------

@pytest.mark.parametrize("kv_tier", ["device", "host", "disk"])
def test_streamed_prefill_equals_logits(checkpoints, kv_tier, tmp_path):
    model = load_model(checkpoints("default")[0], device="cpu")
    ids = prompt(150).tolist()
    settings = Settings(chunk_tokens=37, kv_block_tokens=16, kv_tiers=kv_tier, offload_dir=str(tmp_path))
    got = prefill(model, ids, settings=settings, all_logits=True).logits
    assert (got - model.logits(ids)).abs().max().item() <= 1e-4


def test_score_and_generate_equal_the_plain_forward(checkpoints):
    model = load_model(checkpoints("default")[0], device="cpu")
    ctx = prompt(120).tolist()
    want, ids = [], list(ctx)
    for _ in range(4):
        want.append(int(model.logits(ids)[-1].argmax()))
        ids.append(want[-1])
    small = Settings(chunk_tokens=23, kv_block_tokens=8)
    assert generate(model, ctx, 4, settings=small) == want
    branches = [(prompt(3, seed=2).tolist(), want[:2]), ([], prompt(2, seed=3).tolist())]
    for got, ref in zip(score(model, ctx, branches, settings=small), score_reference(model, ctx, branches)):
        assert got.exact == ref.exact and abs(got.logprob - ref.logprob) <= 1e-3 * max(1.0, abs(ref.logprob))


def test_unknown_layer_type_is_named():
    from ctxprobe.models.config import from_hf
    from tiny_models import PRESETS

    bad = dict(PRESETS["gpt_oss"], architectures=["GptOssForCausalLM"],
               layer_types=["sliding_attention", "chunked_attention", "full_attention"])
    with pytest.raises(UserError, match="'layer_types' must name sliding_attention, full_attention.*chunked"):
        from_hf(bad)


def test_memory_plan_keeps_windows_to_the_sliding_layers():
    from ctxprobe.runner.memory import ModelShape
    from ctxprobe.runner.presets import preset_config

    shape = ModelShape.from_config(preset_config("gpt-oss-120b-4l"), 2)
    assert [(lay.kind, lay.span) for lay in shape.layers] == [("window", 128), ("global", None)] * 2


def test_router_trace_sees_each_prompt_token_once_per_layer(checkpoints):
    from ctxprobe.models.router_tap import observe_routers

    model = load_model(checkpoints("default")[0], device="cpu")
    seen = []

    class Watch:
        def see(self, layer, pos_T, scores_TE, idx_TK):
            seen.append((layer, pos_T.tolist(), tuple(scores_TE.shape), tuple(idx_TK.shape)))
            assert torch.allclose(scores_TE.sum(-1), torch.ones(len(pos_T)))

    with observe_routers(model, Watch()) as layers:
        model.logits(prompt(40))
    assert layers == [0, 1, 2]
    assert seen == [(layer, list(range(40)), (40, 4), (40, 2)) for layer in (0, 1, 2)]


def test_bfloat16_load_stays_close_to_float32(checkpoints):
    path, _ = checkpoints("default")
    full, half = load_model(path, device="cpu"), load_model(path, device="cpu", dtype="bf16")
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    a, b = full.logits(prompt()), half.logits(prompt())
    # mean, not max: a bf16 rounding can flip one token's top-k experts
    assert (a - b).abs().mean().item() < 0.05 and (a.argmax(-1) == b.argmax(-1)).float().mean().item() > 0.8
