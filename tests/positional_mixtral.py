"""A tiny Mixtral whose router changes its mind with position, written with save_pretrained.

How position reaches the router (D = 64, dims: u = 0, d = 1, f = 2, the rest random):
- every token's embedding is 1 along u plus small random components; the first token of every
  prompt (the chat template's <|user|>) also carries F along f;
- attention in layer 0 has zero queries, so each position t averages the values of positions
  0..t evenly; values read only f, so position t gets A/(t+1) along d (A = F / rms(first token));
- the router scores expert 0 by d and experts 1-3 by u (plus a small random part each): expert 0
  wins while A/(t+1) * ALPHA > BETA, i.e. for t + 1 < FLIP, and one of 1-3 after;
- experts output zero and layer 1 attends with zero output, so layer 1 routes as layer 0.
So the top expert is 0 through position FLIP - 2 (buckets 0-4 and part of 5: 16-31) and one of 1-3
from position FLIP - 1 on: the load's entropy goes from 0 to about log2(3) across bucket 5.
"""

from __future__ import annotations

import math
from pathlib import Path

FLIP = 22           # first position (plus one) where experts 1-3 win
F, BETA, KAPPA = 4.0, 0.5, 0.35
D, E = 64, 4


def write_positional_mixtral(root: Path) -> Path:
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    from tiny_llama import write_tokenizer

    tokenizer = write_tokenizer(root)
    first = tokenizer.convert_tokens_to_ids("<|user|>")
    config = MixtralConfig(vocab_size=len(tokenizer), hidden_size=D, intermediate_size=16, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=E,
                           num_experts_per_tok=1, sliding_window=None, max_position_embeddings=4096,
                           rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = MixtralForCausalLM(config).float().eval()
    g = torch.Generator().manual_seed(0)
    Hq, Hkv, Dh = 4, 2, 16
    amplitude = F / math.sqrt((1 + F * F) / D)          # A: the first token's f after the RMS norm
    alpha = BETA * FLIP / amplitude
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        emb = model.model.embed_tokens.weight
        emb[:, 0] = 1.0
        emb[:, 3:] = 0.13 * torch.randn(emb.shape[0], D - 3, generator=g)
        emb[first, 3:] = 0.0
        emb[first, 2] = F
        model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape, generator=g) / math.sqrt(D))
        model.model.norm.weight.fill_(1.0)
        for i, layer in enumerate(model.model.layers):
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
            if i == 0:
                for h in range(Hkv):
                    layer.self_attn.v_proj.weight[h * Dh, 2] = 1.0
                for j in range(Hq):
                    layer.self_attn.o_proj.weight[1, j * Dh] = 1.0 / Hq
            gate = layer.mlp.gate.weight if hasattr(layer.mlp, "gate") else layer.block_sparse_moe.gate.weight
            gate[0, 1] = alpha
            for e in range(1, E):
                gate[e, 0] = BETA
                r = torch.randn(D - 3, generator=g)
                gate[e, 3:] = KAPPA * r / r.norm()
    model.save_pretrained(root)
    return root
