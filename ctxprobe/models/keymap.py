"""HF checkpoint key -> our parameter name, per architecture, as data.

`{}` stands for a number (layer, then expert); the numbers fill our name's `{}` in order. A
target ending in `[{}]` is one expert's slice of a stacked [E, ...] parameter. `None` drops the
key (buffers older checkpoints saved, the vision tower of a multimodal checkpoint); a trailing
`*` in a dropped key matches any suffix.
"""

from __future__ import annotations

_ATTENTION = {
    "model.layers.{}.input_layernorm.weight": "blocks.{}.attn_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "blocks.{}.ffn_norm.weight",
    "model.layers.{}.self_attn.q_proj.weight": "blocks.{}.wq.weight",
    "model.layers.{}.self_attn.k_proj.weight": "blocks.{}.wk.weight",
    "model.layers.{}.self_attn.v_proj.weight": "blocks.{}.wv.weight",
    "model.layers.{}.self_attn.o_proj.weight": "blocks.{}.wo.weight",
    "model.layers.{}.self_attn.rotary_emb.inv_freq": None,
}

_ENDS = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}

LLAMA = {
    **_ENDS, **_ATTENTION,
    "model.layers.{}.mlp.gate_proj.weight": "blocks.{}.ffn.w1.weight",
    "model.layers.{}.mlp.up_proj.weight": "blocks.{}.ffn.w3.weight",
    "model.layers.{}.mlp.down_proj.weight": "blocks.{}.ffn.w2.weight",
}

MIXTRAL = {
    **_ENDS, **_ATTENTION,
    "model.layers.{}.block_sparse_moe.gate.weight": "blocks.{}.ffn.gate.weight",
    "model.layers.{}.block_sparse_moe.experts.{}.w1.weight": "blocks.{}.ffn.experts.w1[{}]",
    "model.layers.{}.block_sparse_moe.experts.{}.w3.weight": "blocks.{}.ffn.experts.w3[{}]",
    "model.layers.{}.block_sparse_moe.experts.{}.w2.weight": "blocks.{}.ffn.experts.w2[{}]",
}

QWEN3_MOE = {
    **LLAMA,
    "model.layers.{}.self_attn.q_norm.weight": "blocks.{}.q_norm.weight",
    "model.layers.{}.self_attn.k_norm.weight": "blocks.{}.k_norm.weight",
    "model.layers.{}.mlp.gate.weight": "blocks.{}.ffn.gate.weight",
    "model.layers.{}.mlp.experts.{}.gate_proj.weight": "blocks.{}.ffn.experts.w1[{}]",
    "model.layers.{}.mlp.experts.{}.up_proj.weight": "blocks.{}.ffn.experts.w3[{}]",
    "model.layers.{}.mlp.experts.{}.down_proj.weight": "blocks.{}.ffn.experts.w2[{}]",
}

LLAMA4 = {
    **_ENDS, **_ATTENTION,
    "model.layers.{}.feed_forward.gate_proj.weight": "blocks.{}.ffn.w1.weight",
    "model.layers.{}.feed_forward.up_proj.weight": "blocks.{}.ffn.w3.weight",
    "model.layers.{}.feed_forward.down_proj.weight": "blocks.{}.ffn.w2.weight",
    "model.layers.{}.feed_forward.router.weight": "blocks.{}.ffn.router.weight",
    "model.layers.{}.feed_forward.experts.gate_up_proj": "blocks.{}.ffn.experts.gate_up",
    "model.layers.{}.feed_forward.experts.down_proj": "blocks.{}.ffn.experts.down",
    "model.layers.{}.feed_forward.shared_expert.gate_proj.weight": "blocks.{}.ffn.shared.w1.weight",
    "model.layers.{}.feed_forward.shared_expert.up_proj.weight": "blocks.{}.ffn.shared.w3.weight",
    "model.layers.{}.feed_forward.shared_expert.down_proj.weight": "blocks.{}.ffn.shared.w2.weight",
}

# The multimodal checkpoint holds the same text model under `language_model.`.
LLAMA4_MULTIMODAL = {
    **{f"language_model.{k}": v for k, v in LLAMA4.items()},
    "vision_model.*": None,
    "multi_modal_projector.*": None,
}

KEYMAPS = {
    "LlamaForCausalLM": LLAMA,
    "MixtralForCausalLM": MIXTRAL,
    "Qwen3MoeForCausalLM": QWEN3_MOE,
    "Llama4ForCausalLM": LLAMA4,
    "Llama4ForConditionalGeneration": LLAMA4_MULTIMODAL,
}
