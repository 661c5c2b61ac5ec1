"""DeepSeek-V3: our logits (absorbed multi-head latent attention, grouped sigmoid routing) equal
transformers' eager implementation (expanded heads) within 1e-4 in float32 on tiny random
checkpoints written by save_pretrained; each feature moves the logits; FP8 block-quantized weights
built from known floats load as those floats; the multi-token-prediction layer is dropped; the
cache per token is the latent plus the rope key."""

import json
import shutil

import pytest
import torch

pytest.importorskip("transformers")

from ctxprobe.errors import UserError  # noqa: E402
from ctxprobe.models import quantized  # noqa: E402
from ctxprobe.models.config import from_hf  # noqa: E402
from ctxprobe.models.shape import shape_of  # noqa: E402
from tiny_models import checkpoint_cache, hf_logits, prompt  # noqa: E402
from ctxprobe.runner import Settings, generate, load_model, prefill, score, score_reference  # noqa: E402

CASES = {
    # q_lora_rank 48, 4 groups of 2 experts with 2 kept, layer 0 dense, interleaved rope, YaRN + mscale
    "default": {},
    # queries from one projection, half-split rope, one group, no renormalisation, two dense layers
    "plain": dict(q_lora_rank=None, rope_interleave=False, n_group=1, topk_group=1, norm_topk_prob=False,
                  first_k_dense_replace=2, rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return checkpoint_cache(tmp_path_factory, lambda case: ("deepseek_v3", CASES[case]))


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
    s = cfg.family_settings
    assert cfg.family == "deepseek_v3" and cfg.moe_layers == [False, True, True]
    assert (s.q_lora_rank, s.kv_lora_rank, s.qk_rope_head_dim, s.qk_nope_head_dim, s.v_head_dim) == (48, 32, 8, 16, 12)
    assert (s.n_group, s.topk_group, s.routed_scaling_factor, s.n_shared_experts) == (4, 2, 2.5, 1)
    assert (cfg.n_kv_heads, cfg.head_dim, cfg.v_head_dim) == (1, 40, 32)   # K: latent 32 + rope 8; V: latent
    plain = load_model(checkpoints("plain")[0], device="cpu").config
    assert plain.family_settings.q_lora_rank is None and plain.moe_layers == [False, False, True]


def _turn_off(feature, block):
    ffn = block.ffn
    if feature == "groups" and hasattr(ffn, "settings"):
        ffn.settings = type(ffn.settings)(**{**ffn.settings.__dict__, "topk_group": ffn.settings.n_group})
    elif feature == "score_bias" and hasattr(ffn, "score_bias"):
        ffn.score_bias.zero_()
    elif feature == "routed_scaling" and hasattr(ffn, "settings"):
        ffn.settings = type(ffn.settings)(**{**ffn.settings.__dict__, "routed_scaling_factor": 1.0})
    elif feature == "mscale":
        block.scale = (16 + 8) ** -0.5
    elif feature == "yarn":
        block.rope_args = (block.rope_args[0], block.rope_args[1], None)
    elif feature == "shared_experts" and hasattr(ffn, "shared"):
        ffn.shared.w2.weight.zero_()


@pytest.mark.parametrize("feature", ["groups", "score_bias", "routed_scaling", "mscale", "yarn", "shared_experts"])
def test_each_feature_changes_the_logits(checkpoints, feature):
    model = load_model(checkpoints("default")[0], device="cpu")
    ids = prompt()
    ref = model.logits(ids)
    for block in model.blocks:
        _turn_off(feature, block)
    assert (model.logits(ids) - ref).abs().max().item() > 1e-2


def test_multi_token_prediction_layer_is_dropped(checkpoints, tmp_path):
    """Published checkpoints store num_nextn_predict_layers extra layers after the last one."""
    from safetensors.torch import save_file

    src, _ = checkpoints("default")
    dst = tmp_path / "mtp"
    shutil.copytree(src, dst)
    save_file({"model.layers.3.eh_proj.weight": torch.ones(64, 128),
               "model.layers.3.self_attn.kv_b_proj.weight": torch.ones(112, 32)}, str(dst / "mtp.safetensors"))
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    index["weight_map"].update({"model.layers.3.eh_proj.weight": "mtp.safetensors",
                                "model.layers.3.self_attn.kv_b_proj.weight": "mtp.safetensors"})
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    ids = prompt(40)
    assert torch.equal(load_model(dst, device="cpu").logits(ids), load_model(src, device="cpu").logits(ids))
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(dict(cfg, num_nextn_predict_layers=0)))
    with pytest.raises(UserError, match="unexpected key.*model.layers.3"):
        load_model(dst, device="cpu")


# --- FP8 -------------------------------------------------------------------------------------------

def fp8_encode(w: torch.Tensor, block: tuple[int, int]):
    """float [O, I] -> (float8_e4m3 [O, I], float32 scale per block [ceil(O/bo), ceil(I/bi)]) with each
    block's largest value at fp8's largest (448), and the floats that pair stands for."""
    O, I = w.shape
    bo, bi = block
    scale = torch.zeros(-(-O // bo), -(-I // bi))
    for r in range(scale.shape[0]):
        for c in range(scale.shape[1]):
            scale[r, c] = w[r * bo:(r + 1) * bo, c * bi:(c + 1) * bi].abs().max() / 448.0
    full = scale.repeat_interleave(bo, 0)[:O].repeat_interleave(bi, 1)[:, :I]
    q = (w / full).to(torch.float8_e4m3fn)
    return q, scale, q.float() * full


def test_fp8_dequantizes_known_weights():
    w = torch.randn(40, 70, generator=torch.Generator().manual_seed(0))
    q, scale, known = fp8_encode(w, (16, 32))
    assert scale.shape == (3, 3)
    assert torch.equal(quantized.dequantize_fp8(q, scale, (16, 32)), known)
    assert (known - w).abs().max() <= 0.07 * w.abs().max()     # e4m3 keeps ~2 significant digits


def write_fp8_checkpoint(src, dst, block, floats=None):
    """Copy of `src` whose projection weights inside the layers are stored as FP8 pairs -> {key: floats};
    `floats`: a directory to write the same checkpoint to with those floats unquantized."""
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    if floats is not None:
        shutil.copytree(src, floats)
    known, weight_map = {}, {}
    for f in sorted(src.glob("*.safetensors")):
        tensors = load_file(str(f))
        plain = dict(tensors)
        for key in [k for k in tensors if "_proj" in k and k.endswith(".weight")]:
            tensors[key], tensors[key + "_scale_inv"], known[key] = fp8_encode(tensors[key], block)
            plain[key] = known[key]
        save_file(tensors, str(dst / f.name), metadata={"format": "pt"})
        weight_map.update({key: f.name for key in tensors})
        if floats is not None:
            save_file(plain, str(floats / f.name), metadata={"format": "pt"})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": list(block)}
    (dst / "config.json").write_text(json.dumps(cfg))
    return known


def test_fp8_checkpoint_loads_as_its_float_weights(checkpoints, tmp_path):
    from transformers import DeepseekV3ForCausalLM

    src, _ = checkpoints("default")
    known = write_fp8_checkpoint(src, tmp_path / "fp8", (16, 16), floats=tmp_path / "floats")
    assert len(known) > 20
    model = load_model(tmp_path / "fp8", device="cpu")
    assert model.config.quantization == {"method": "fp8", "block": (16, 16)}
    assert torch.equal(model.blocks[1].wkv_b.weight, known["model.layers.1.self_attn.kv_b_proj.weight"])
    assert torch.equal(model.blocks[2].ffn.experts.w2[5], known["model.layers.2.mlp.experts.5.down_proj.weight"])
    hf = DeepseekV3ForCausalLM.from_pretrained(tmp_path / "floats", attn_implementation="eager").float().eval()
    ids = prompt()
    assert (model.logits(ids) - hf_logits(hf, ids)).abs().max().item() <= 1e-4


def test_fp8_scales_of_the_wrong_shape_are_named(checkpoints, tmp_path):
    src, _ = checkpoints("default")
    write_fp8_checkpoint(src, tmp_path / "fp8", (16, 16))
    cfg = json.loads((tmp_path / "fp8" / "config.json").read_text())
    cfg["quantization_config"]["weight_block_size"] = [128, 128]
    (tmp_path / "fp8" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"weight_scale_inv' has shape .* in blocks of 128x128"):
        load_model(tmp_path / "fp8", device="cpu")


# --- the cache and the planner's figures -----------------------------------------------------------

def test_cache_per_token_is_the_latent_plus_the_rope_key():
    """DeepSeek-V3's published shape: 61 layers x (512 + 64) x 2 bytes = 70,272 B (~69 KiB) per token
    in bf16 as a latent; today's KV tiers store V (the latent) beside K, hence the second figure."""
    from ctxprobe.models.inspect import describe_config
    from ctxprobe.runner.presets import preset_config

    cfg = preset_config("deepseek-v3-61l")
    shape = shape_of(cfg)
    assert (shape.n_kv_heads, shape.k_head_dim, shape.v_head_dim, shape.values_in_keys) == (1, 576, 512, True)
    assert shape.latent_values_per_token * 2 * 61 == 70272
    facts = describe_config(cfg, length=1000, dtype="bfloat16")
    assert facts["kv_latent_bytes_per_token"] == 70272
    assert facts["kv_bytes_per_token_global"] == 61 * (576 + 512) * 2


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


def test_impossible_routing_is_named():
    from tiny_models import PRESETS

    base = dict(PRESETS["deepseek_v3"], architectures=["DeepseekV3ForCausalLM"])
    with pytest.raises(UserError, match="8 routed experts must split into n_group=8 groups of at least 2"):
        from_hf(dict(base, n_group=8, topk_group=2))
    with pytest.raises(UserError, match="routed_scaling_factor"):
        from_hf(dict(base, routed_scaling_factor="2.5"))


def test_router_trace_sees_each_prompt_token_once_per_moe_layer(checkpoints):
    """The MoE layers report (router_tap.py) even though the latent-attention block has its own qkv/finish."""
    from ctxprobe.models.router_tap import observe_routers

    model = load_model(checkpoints("default")[0], device="cpu")
    seen = []

    class Watch:
        def see(self, layer, pos_T, scores_TE, idx_TK):
            seen.append((layer, pos_T.tolist(), tuple(scores_TE.shape), tuple(idx_TK.shape)))
            assert 0 <= scores_TE.min() and scores_TE.max() <= 1

    with observe_routers(model, Watch()) as layers:
        model.logits(prompt(40))
    assert layers == [1, 2]
    assert seen == [(layer, list(range(40)), (40, 8), (40, 2)) for layer in (1, 2)]


def test_bfloat16_load_stays_close_to_float32(checkpoints):
    """bf16 rounds the expert-choice bias too (HF keeps it in float32): near-ties may pick other experts."""
    path, _ = checkpoints("default")
    full, half = load_model(path, device="cpu"), load_model(path, device="cpu", dtype="bf16")
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    a, b = full.logits(prompt()), half.logits(prompt())
    assert (a - b).abs().mean().item() < 0.05 and (a.argmax(-1) == b.argmax(-1)).float().mean().item() > 0.8
