"""The built-in model, constructed analytically: a 2-layer Llama 4 (MoE) that retrieves a number.

Why constructed and not trained: its behaviour must be known exactly, so that ctxprobe can be
checked against it. The circuit, for a needle "... is 1234567." and a prompt ending "... is":

  layer 0 (RoPE, chunked-local): three previous-token heads. Head h attends to position t-h
      (h = 1, 2, 3) through RoPE alone (query and key are fixed vectors rotated so that their
      dot product peaks at relative distance h) and copies that token's class into slot prev_h.
      Classes: the ten digits, space, period, other.
  layer 1 (NoPE, global): one retrieval head. The query is the 3-gram of classes ending at t
      (cur, prev1, prev2); the key is the 3-gram ending just before s (prev1, prev2, prev3),
      plus a bonus B on keys whose own token is a digit. Score = ALPHA * matching slots
      + B * is_digit. The value is the key token's digit (or period) class; the unembedding reads it.

At the answer's first digit the query is (space, other, other): the needle's first digit
matches fully (score 3 ALPHA + B), but so does every haystack position that is the third
character of a word (3 ALPHA each, no bonus). The first digit's attention weight is therefore
1 / (1 + N_w exp(-B)) with N_w the number of such positions before it, and the digit wins the
argmax only while that weight exceeds SPACE_LOGIT / DIGIT_GAIN = 1/2, i.e. while N_w < exp(B).
Later digits have no haystack competitors (the haystack has no digits), so the model's
context limit is set by B alone: a cliff, at every depth, where N_w crosses exp(B).

The MoE feed-forward layers route every token (sigmoid top-1 over 4 experts plus a shared
expert, as in Llama 4) with small random weights that write only into spare dimensions, so
the MoE path runs without disturbing the circuit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

# Hidden layout. D = hidden size, H = heads, Dh = head dim, V = vocab (256 bytes + <|eot|>).
N_CLASS = 13  # digits 0-9, space, period, other
CONST, CUR, PREV = 0, 1, (1 + N_CLASS, 1 + 2 * N_CLASS, 1 + 3 * N_CLASS)
OUT = 1 + 4 * N_CLASS  # 10 digit outputs, then one end-of-text output
EOS_OUT = OUT + 10
SPARE = OUT + 11  # dims the MoE layers write into
D, H, DH, V = 96, 3, 48, 257
EOT_ID = 256
SPACE_CLASS, PERIOD_CLASS, OTHER_CLASS = 10, 11, 12

# The circuit's constants. BONUS (B) sets the context limit: N_w < exp(B). The default haystack
# has 0.147 word starts per token (measured by scripts/build_builtin.py), so exp(6.75) = 854
# word starts puts the cliff at ~5.8K tokens: every length up to 4K passes, 8K and up fail.
BONUS = 6.75
ALPHA = 12.0  # per matching 3-gram slot
DIGIT_GAIN = 24.0  # unembedding gain on the retrieved digit
SPACE_LOGIT = 12.0  # the default prediction: a space (threshold weight = 12 / 24 = 1/2)
PREV_SHARPNESS = 12.0  # per RoPE pair, in the previous-token heads
ROPE_THETA = 200.0
CHUNK_SIZE = 1 << 20  # chunked-local layers see the whole prompt at the lengths it is probed at


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, which ByteLevel tokenizers use."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def token_class(byte: int) -> int:
    if ord("0") <= byte <= ord("9"):
        return byte - ord("0")
    return {ord(" "): SPACE_CLASS, ord("."): PERIOD_CLASS}.get(byte, OTHER_CLASS)


def tokenizer_json() -> dict:
    """A byte-level tokenizer.json: token id = byte value, plus <|eot|> = 256, no merges."""
    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": EOT_ID, "content": "<|eot|>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                          "use_regex": False},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                    "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": []},
    }


def config_dict(bonus: float = BONUS) -> dict:
    return {
        "architectures": ["Llama4ForCausalLM"],
        "model_type": "llama4_text",
        "vocab_size": V,
        "hidden_size": D,
        "intermediate_size": 32,
        "intermediate_size_mlp": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": H,
        "num_key_value_heads": H,
        "head_dim": DH,
        "hidden_act": "silu",
        "max_position_embeddings": 1 << 20,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
        "num_local_experts": 4,
        "num_experts_per_tok": 1,
        "interleave_moe_layer_step": 1,
        "use_qk_norm": False,
        "no_rope_layers": [1, 0],
        "attention_chunk_size": CHUNK_SIZE,
        "attn_temperature_tuning": False,
        "floor_scale": 8192,
        "attn_scale": 0.1,
        "tie_word_embeddings": False,
        "bos_token_id": None,
        "eos_token_id": EOT_ID,
        "pad_token_id": EOT_ID,
        "torch_dtype": "float32",
        "ctxprobe_builtin": {"alpha": ALPHA, "bonus": bonus, "digit_gain": DIGIT_GAIN,
                             "space_logit": SPACE_LOGIT},
    }


def _prev_token_qk(offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed q0, k0 [Dh] whose RoPE-rotated dot product peaks at q_pos - k_pos = offset.

    Llama 4 rotates adjacent pairs as complex numbers: q_t = q0 e^{i t w}, k_s = k0 e^{i s w}.
    With q0 = A and k0 = e^{i offset w} per pair, Re(q_t conj(k_s)) = A sum_w cos((t-s-offset) w).
    """
    inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, DH, 2, dtype=torch.float64) / DH))
    q0 = torch.zeros(DH // 2, 2, dtype=torch.float64)
    q0[:, 0] = PREV_SHARPNESS
    k0 = torch.stack([torch.cos(offset * inv_freq), torch.sin(offset * inv_freq)], dim=-1)
    return q0.flatten(), k0.flatten()


def first_digit_weight(word_starts: float, bonus: float = BONUS) -> float:
    """The retrieval head's weight on the needle's first digit with N_w word starts before it."""
    return 1.0 / (1.0 + word_starts * math.exp(-bonus))


def cliff_length(word_start_density: float, bonus: float = BONUS) -> float:
    """Prompt length (tokens) at which the first digit's weight falls to 1/2: the model's limit."""
    return math.exp(bonus) / word_start_density


def _empty_attention():
    """q, k, v [H * Dh, D] and o [D, H * Dh], all zero."""
    return torch.zeros(H * DH, D), torch.zeros(H * DH, D), torch.zeros(H * DH, D), torch.zeros(D, H * DH)


def state_dict(bonus: float = BONUS, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights in transformers' Llama4ForCausalLM layout (float32)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    scale = DH ** -0.5  # the attention's softmax scale, folded out of q below

    emb = torch.zeros(V, D)
    emb[:, CONST] = 1.0
    for b in range(256):
        emb[b, CUR + token_class(b)] = 1.0
    emb[EOT_ID, CUR + OTHER_CLASS] = 1.0
    sd["model.embed_tokens.weight"] = emb

    # Layer 0: previous-token heads. Input rms is sqrt(2 / D) (const + one class), undone by the norm weight.
    p = "model.layers.0."
    sd[p + "input_layernorm.weight"] = torch.full((D,), math.sqrt(2.0 / D))
    wq, wk, wv, wo = _empty_attention()
    for h in range(H):
        q0, k0 = _prev_token_qk(offset=h + 1)
        wq[h * DH:(h + 1) * DH, CONST] = (q0 / scale).float()
        wk[h * DH:(h + 1) * DH, CONST] = k0.float()
        for c in range(N_CLASS):
            wv[h * DH + c, CUR + c] = 1.0
            wo[PREV[h] + c, h * DH + c] = 1.0
    sd.update({p + "self_attn.q_proj.weight": wq, p + "self_attn.k_proj.weight": wk,
               p + "self_attn.v_proj.weight": wv, p + "self_attn.o_proj.weight": wo})

    # Layer 1: the retrieval head (head 0); heads 1 and 2 are silent (zero value and output).
    p = "model.layers.1."
    sd[p + "input_layernorm.weight"] = torch.full((D,), math.sqrt(5.0 / D))
    wq, wk, wv, wo = _empty_attention()
    query_slots = (CUR, PREV[0], PREV[1])
    key_slots = (PREV[0], PREV[1], PREV[2])
    for slot in range(3):
        for c in range(N_CLASS):
            wq[slot * N_CLASS + c, query_slots[slot] + c] = ALPHA / scale
            wk[slot * N_CLASS + c, key_slots[slot] + c] = 1.0
    bonus_dim = 3 * N_CLASS
    wq[bonus_dim, CONST] = bonus / scale
    for c in range(10):
        wk[bonus_dim, CUR + c] = 1.0
        wv[c, CUR + c] = 1.0
        wo[OUT + c, c] = 1.0
    wv[10, CUR + PERIOD_CLASS] = 1.0
    wo[EOS_OUT, 10] = 1.0
    sd.update({p + "self_attn.q_proj.weight": wq, p + "self_attn.k_proj.weight": wk,
               p + "self_attn.v_proj.weight": wv, p + "self_attn.o_proj.weight": wo})

    # MoE feed-forward in both layers: real routing, output confined to the spare dims and small.
    spare = D - SPARE
    for layer in (0, 1):
        p = f"model.layers.{layer}."
        sd[p + "post_attention_layernorm.weight"] = torch.full((D,), 0.1)
        sd[p + "feed_forward.router.weight"] = torch.randn(4, D, generator=g)
        gate_up = torch.randn(4, D, 64, generator=g) * 0.3
        down = torch.zeros(4, 32, D)
        down[:, :, SPARE:] = torch.randn(4, 32, spare, generator=g) * 0.01
        sd[p + "feed_forward.experts.gate_up_proj"] = gate_up
        sd[p + "feed_forward.experts.down_proj"] = down
        sd[p + "feed_forward.shared_expert.gate_proj.weight"] = torch.randn(32, D, generator=g) * 0.3
        sd[p + "feed_forward.shared_expert.up_proj.weight"] = torch.randn(32, D, generator=g) * 0.3
        shared_down = torch.zeros(D, 32)
        shared_down[SPARE:] = torch.randn(spare, 32, generator=g) * 0.01
        sd[p + "feed_forward.shared_expert.down_proj.weight"] = shared_down

    # Final norm: the residual holds const + 4 classes + <= 1 of output, rms ~ sqrt(5 / D).
    sd["model.norm.weight"] = torch.full((D,), math.sqrt(5.0 / D))
    head = torch.zeros(V, D)
    for d in range(10):
        head[ord("0") + d, OUT + d] = DIGIT_GAIN
    head[EOT_ID, EOS_OUT] = DIGIT_GAIN
    head[ord(" "), CONST] = SPACE_LOGIT
    sd["lm_head.weight"] = head
    return sd


def write(out_dir: str | Path, bonus: float = BONUS, seed: int = 0) -> Path:
    """Write config.json, model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config_dict(bonus), indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in state_dict(bonus, seed).items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json(), ensure_ascii=False) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|eot|>", "pad_token": "<|eot|>",
         "model_max_length": 1 << 20, "clean_up_tokenization_spaces": False}, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": EOT_ID, "pad_token_id": EOT_ID, "do_sample": False}, indent=2) + "\n")
    return out
