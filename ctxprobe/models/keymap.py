"""HF checkpoint key -> our parameter name, as data: the blocks every family's key map shares,
and the functions that apply a key map (each family file holds its own KEYS).

`{}` stands for a number (layer, then expert); the numbers fill our name's `{}` in order. A
target ending in `[{}]` is one expert's slice of a stacked [E, ...] parameter. `None` drops the
key (buffers older checkpoints saved, the vision tower of a multimodal checkpoint); a trailing
`*` in a dropped key matches any suffix.
"""

from __future__ import annotations

import re
from collections.abc import Callable

ATTENTION = {
    "model.layers.{}.input_layernorm.weight": "blocks.{}.attn_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "blocks.{}.ffn_norm.weight",
    "model.layers.{}.self_attn.q_proj.weight": "blocks.{}.wq.weight",
    "model.layers.{}.self_attn.k_proj.weight": "blocks.{}.wk.weight",
    "model.layers.{}.self_attn.v_proj.weight": "blocks.{}.wv.weight",
    "model.layers.{}.self_attn.o_proj.weight": "blocks.{}.wo.weight",
    "model.layers.{}.self_attn.rotary_emb.inv_freq": None,
}

ENDS = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}

Rules = list[tuple[re.Pattern, str | None]]


def compile_keys(keymap: dict) -> Rules:
    rules = []
    for hf, ours in keymap.items():
        pattern = re.escape(hf).replace(r"\{\}", r"(\d+)")
        pattern = pattern[:-2] + ".*" if hf.endswith("*") else pattern
        rules.append((re.compile(pattern + "$"), ours))
    return rules


def map_key(rules: Rules, key: str) -> tuple[str, int | None] | None | bool:
    """-> (our name, expert index or None); None when the key is dropped; False when unknown."""
    for pattern, ours in rules:
        m = pattern.match(key)
        if m:
            if ours is None:
                return None
            nums = list(m.groups())
            expert = None
            if ours.endswith("[{}]"):
                ours, expert = ours[:-4], int(nums.pop())
            return ours.format(*nums), expert
    return False


def stored_key(keymap: dict, name: str, expert: int | None) -> str:
    """The checkpoint key that should have filled our parameter `name` (expert slice `expert`)."""
    for hf, ours in keymap.items():
        if ours is None or ours.endswith("[{}]") != (expert is not None):
            continue
        m = re.fullmatch(_our_pattern(ours), name)
        if m:
            return hf.format(*m.groups(), *([] if expert is None else [expert]))
    return name if expert is None else f"{name}[{expert}]"


def stacked(keymap: dict) -> Callable[[str], bool]:
    """-> is_stacked(our parameter name): filled one expert slice at a time by several stored keys."""
    patterns = [re.compile(_our_pattern(ours)) for ours in keymap.values() if ours and ours.endswith("[{}]")]
    return lambda name: any(p.fullmatch(name) for p in patterns)


def _our_pattern(ours: str) -> str:
    return re.escape(ours.removesuffix("[{}]")).replace(r"\{\}", r"(\d+)")
