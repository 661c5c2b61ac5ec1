"""Our logits equal transformers' eager implementation (float32, >= 200-token prompts, max abs diff <= 1e-4)
on tiny random multi-shard checkpoints, with configs that exercise every family feature."""

import pytest
import torch

pytest.importorskip("transformers")

from ctxprobe.runner import load_model  # noqa: E402
from tiny_models import PROMPT_LEN, checkpoint_cache, hf_logits, prompt  # noqa: E402

CASES = {
    # llama3 rope scaling (original_max_position_embeddings 64 < prompt), GQA
    "llama": ("llama", {}),
    "llama_tied": ("llama", dict(tie_word_embeddings=True, rope_parameters=dict(rope_type="default",
                                                                                  rope_theta=10000.0))),
    # softmax top-2 of 4 experts, sliding window 100 < prompt
    "mixtral": ("mixtral", {}),
    # norm_topk_prob on, dense layer 1 via mlp_only_layers
    "qwen3_moe_norm": ("qwen3_moe", {}),
    # norm_topk_prob off, MoE only on odd layers via decoder_sparse_step 2
    "qwen3_moe_step": ("qwen3_moe", dict(norm_topk_prob=False, decoder_sparse_step=2, mlp_only_layers=[])),
    # 4 layers (layer 3 NoPE + temperature), chunks of 64 < prompt, MoE on layers 1 and 3, L2 qk norm, llama3 rope
    "llama4": ("llama4", {}),
    "llama4_multimodal": ("llama4_multimodal", {}),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return checkpoint_cache(tmp_path_factory, CASES.__getitem__)


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(checkpoints, case):
    path, hf = checkpoints(case)
    assert len(list(path.glob("*.safetensors"))) >= 2, "the checkpoint should be sharded"
    model = load_model(path, device="cpu")
    ids = prompt()
    ref, ours = hf_logits(hf, ids), model.logits(ids)
    assert ours.shape == (PROMPT_LEN, 300)
    assert (ours - ref).abs().max().item() <= 1e-4
    assert ref.abs().max().item() > 1.0, "logits too small for the comparison to mean anything"


def test_config_reads_every_feature(checkpoints):
    cfg = load_model(checkpoints("llama4")[0], device="cpu").config
    assert cfg.rope_layers == [True, True, True, False]
    assert cfg.chunked_layers == [True, True, True, False] and cfg.chunk_size == 64
    assert cfg.moe_layers == [False, True, False, True]
    assert cfg.rope_scaling["factor"] == 8.0 and cfg.l2_qk_norm and cfg.attn_temperature
    q = load_model(checkpoints("qwen3_moe_step")[0], device="cpu").config
    assert q.moe_layers == [False, True, False] and not q.norm_topk_prob
    assert load_model(checkpoints("mixtral")[0], device="cpu").config.sliding_window == 100


def _turn_off(feature):
    """A mutation of a loaded model that removes one feature (to show the parity test exercises it)."""
    from ctxprobe.models import blocks

    def mutate(b):
        if feature == "chunks":
            b.mask = dict(b.mask, chunk_size=None)
        elif feature == "window":
            b.mask = dict(b.mask, window=None)
        elif feature == "temperature":
            b.use_temperature = False
        elif feature == "qk_norm":
            b.l2_qk_norm = False
        elif feature == "rope_scaling":
            b.rope_args = (b.rope_args[0], b.rope_args[1], None)
        elif feature == "moe_scales_input" and isinstance(b.ffn, blocks.SigmoidMoE):
            f = b.ffn
            f.forward = lambda x: f.shared(x) + blocks.grouped_dispatch(f.experts, x, *f.route(x), scale_input=False)
        elif feature == "norm_topk_prob" and isinstance(b.ffn, blocks.SoftmaxMoE):
            b.ffn.renormalise = not b.ffn.renormalise

    return mutate


FEATURES = [("llama4", "chunks"), ("llama4", "temperature"), ("llama4", "qk_norm"), ("llama4", "rope_scaling"),
            ("llama4", "moe_scales_input"), ("llama", "rope_scaling"), ("mixtral", "window"),
            ("qwen3_moe_norm", "norm_topk_prob"), ("qwen3_moe_step", "norm_topk_prob")]


@pytest.mark.parametrize("case,feature", FEATURES)
def test_each_feature_changes_the_logits(checkpoints, case, feature):
    """Each feature moves the logits by far more than the parity tolerance, so parity really tests it."""
    model = load_model(checkpoints(case)[0], device="cpu")
    ids = prompt()
    ref = model.logits(ids)
    for block in model.blocks:
        _turn_off(feature)(block)
    assert (model.logits(ids) - ref).abs().max().item() > 1e-2


def test_bfloat16_load_stays_close_to_float32(checkpoints):
    import ctxprobe

    path, _ = checkpoints("llama4")
    full, half = ctxprobe.load_model(path, device="cpu"), ctxprobe.load_model(path, device="cpu", dtype="bf16")
    assert half.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in half.parameters())
    ids = prompt()
    a, b = full.logits(ids), half.logits(ids)
    # mean, not max: a bf16 rounding can flip one token's top-1 expert
    assert (a - b).abs().mean().item() < 0.05 and (a.argmax(-1) == b.argmax(-1)).float().mean().item() > 0.8
