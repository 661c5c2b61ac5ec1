"""Native models: HF-format checkpoints of Llama, Llama 4 (text), Mixtral and Qwen3-MoE.

A leaf: it knows architectures, configs, key maps and how to compute a block given attention;
loading a checkpoint with its weights placed is the runner's (ctxprobe.runner.load_model).

    m = ctxprobe.runner.load_model("path/to/checkpoint")
    m.logits(ids)                    # [T, V]; or drive it block by block (see blocks.py)
"""

from __future__ import annotations

from ctxprobe.models.config import ModelConfig
from ctxprobe.models.model import Model
from ctxprobe.models.registry import ARCHITECTURES

__all__ = ["ARCHITECTURES", "Model", "ModelConfig"]
