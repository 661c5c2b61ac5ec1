"""The supported families. Adding one: its file (see family.py) and one entry in FAMILIES."""

from __future__ import annotations

from ctxprobe.models import deepseek_v3, gpt_oss, llama, llama4, mixtral, qwen3_moe
from ctxprobe.models.family import Family

FAMILIES: tuple[Family, ...] = (llama.FAMILY, llama4.FAMILY, mixtral.FAMILY, qwen3_moe.FAMILY, gpt_oss.FAMILY,
                                deepseek_v3.FAMILY)

ARCHITECTURES: tuple[str, ...] = tuple(arch for f in FAMILIES for arch in f.architectures)
_BY_ARCH = {arch: f for f in FAMILIES for arch in f.architectures}


def family_of(arch: str) -> Family:
    """The family of an HF architecture name in ARCHITECTURES (KeyError otherwise)."""
    return _BY_ARCH[arch]
