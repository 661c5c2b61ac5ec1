"""A tiny random Llama checkpoint with a byte-level BPE tokenizer trained here and a chat
template, written with transformers' save_pretrained (for the native and serving tests)."""

from __future__ import annotations

import random
from pathlib import Path

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
TEMPLATE_TOKENS = 3  # <|user|> ... </s> <|assistant|>: three special tokens around a message


def write_checkpoint(root: Path, *, chat_template: bool = True) -> Path:
    """A 2-layer Llama (dim 32) and a 400-token BPE trained on seeded prose, saved under root."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fast = write_tokenizer(root, chat_template=chat_template)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root)
    return root


def write_tokenizer(root: Path, *, chat_template: bool = True):
    """The 400-token byte-level BPE (trained on seeded prose) and the chat template, saved under
    root; -> the transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ctxprobe.probes import prose

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<s>", "</s>", "<|user|>", "<|assistant|>"])
    tok.train_from_iterator(prose.sentences(random.Random(0), 2000), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    if chat_template:
        fast.chat_template = TEMPLATE
    fast.save_pretrained(root)
    return fast
