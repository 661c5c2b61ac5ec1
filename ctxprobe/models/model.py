"""The model object every family builds: embedding, a list of Blocks, final norm and head.

`logits` is the plain full forward and uses exactly the loop a streaming runner uses:
embed -> for each block: qkv -> attention.attend over all keys -> finish -> head.
Scoring and generation are the runner's (ctxprobe.runner.score / generate).
"""

from __future__ import annotations

import torch
from torch import nn

from ctxprobe import attention
from ctxprobe.errors import UserError
from ctxprobe.models.blocks import RMSNorm


def attention_extras(block) -> dict:
    """What a block adds to attention.attend beyond its mask: gpt-oss's per-head sink logits."""
    sinks = getattr(block, "sinks", None)
    return {} if sinks is None else {"sinks": sinks}


class Model(nn.Module):
    def __init__(self, cfg, blocks: list[nn.Module]):
        super().__init__()
        self.config = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(blocks)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.requires_grad_(False)
        self.tokenizer = None          # probes tokenizer protocol, set by the loader when tokenizer.json exists
        self.chat_template = None      # jinja2 source from tokenizer_config.json, or None
        self.special_tokens = {}       # bos_token / eos_token strings for the template
        self.path = None

    @property
    def device(self) -> torch.device:
        return self.tok_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_embeddings.weight.dtype

    def embed(self, ids_T) -> torch.Tensor:
        """[T] token ids -> x [T, D] in the model's dtype."""
        ids_T = torch.as_tensor(ids_T, dtype=torch.long, device=self.device)
        return self.tok_embeddings(ids_T)

    def head(self, x_TD: torch.Tensor) -> torch.Tensor:
        """Final norm + lm head: x [T, D] -> logits [T, V] (model dtype)."""
        return self.output(self.norm(x_TD))

    @torch.inference_mode()
    def logits(self, token_ids, weights=None) -> torch.Tensor:
        """Plain full forward: token ids [T] -> float32 logits [T, V].

        weights: what brings each block's weights in (enter(l) / leave(l) / restore(), the
        runner's LayerWeights); None for a model whose blocks all live on its device. A model
        whose weights stream (host or disk tier) is run by ctxprobe.runner.logits(model, ids)."""
        if weights is None and any(p.device != self.device for p in self.blocks.parameters()):
            raise UserError("this model's block weights stream one layer at a time (host or disk tier); "
                            "use ctxprobe.runner.logits(model, ids) for its plain forward")
        x = self.embed(token_ids)
        pos = torch.arange(x.shape[0], device=self.device)
        try:
            for layer, block in enumerate(self.blocks):
                if weights is not None:
                    weights.enter(layer)
                q, k, v = block.qkv(x, pos)
                out, _ = attention.attend(q, k, v, scale=block.scale, **block.mask, **attention_extras(block))
                x = block.finish(x, out)
                if weights is not None:
                    weights.leave(layer)
        finally:
            if weights is not None:
                weights.restore()
        return self.head(x).float()

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render messages with the checkpoint's own chat template (UserError when it has none)."""
        from ctxprobe.models.chat import render_chat

        return render_chat(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                           special_tokens=self.special_tokens, where=self.path or "this model")
