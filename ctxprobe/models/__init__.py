"""Native models: HF-format checkpoints of Llama, Llama 4 (text), Mixtral and Qwen3-MoE.

    m = load_model("path/to/checkpoint")
    m.logits(ids)                    # [T, V]; or drive it block by block (see blocks.py)
"""

from __future__ import annotations

from pathlib import Path

from ctxprobe.models.config import ModelConfig
from ctxprobe.models.model import Model
from ctxprobe.models.registry import ARCHITECTURES


def load_model(path, device=None, dtype=None, weights: str = "resident") -> Model:
    """Load an HF checkpoint dir (config.json, *.safetensors, optional tokenizer.json and chat template).

    device: None picks CUDA when available, else CPU. dtype: None keeps the checkpoint's dtype.
    weights: where the blocks' weights live (the planner's Plan.weights):
        "resident"  on `device`
        "host"      page-locked host memory at exact size, streamed to a CUDA device one layer
                    ahead of the compute (on a CPU device this is "resident")
        "disk"      read from the checkpoint's safetensors files one layer ahead of the compute;
                    the blocks hold no memory between layers (CPU or CUDA)
    The embedding, final norm and head are always on `device`. model.weight_tier says which tier
    was used.
    """
    from ctxprobe.models.loader import load_weights, read_config, read_template

    root = Path(path)
    cfg = read_config(root)
    model = load_weights(root, cfg, device=device, dtype=dtype, weights=weights)
    model.path = str(root)
    model.chat_template, model.special_tokens = read_template(root)
    if (root / "tokenizer.json").exists():
        from probes import load_tokenizer

        model.tokenizer = load_tokenizer(str(root))
    return model


__all__ = ["ARCHITECTURES", "Model", "ModelConfig", "load_model"]
