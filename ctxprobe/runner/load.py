"""Load a checkpoint for the runner: the models package reads and checks it, the runner decides
where the weights live (ctxprobe/runner/weights.py), then the stored tensors are copied in."""

from __future__ import annotations

from pathlib import Path

import torch

from ctxprobe.errors import UserError
from ctxprobe.models.loader import copy_into, open_checkpoint, parse_dtype, read_config, read_template, stored_tensors
from ctxprobe.models.model import Model
from ctxprobe.runner.weights import place, weight_tier


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
    was used; a model whose blocks stream gives its plain forward through ctxprobe.runner.logits.
    """
    root = Path(path)
    cfg = read_config(root)
    ckpt = open_checkpoint(root, cfg)    # every file, header, key and shape checked before any memory is taken
    device = _load_device(device)
    tier = weight_tier(weights, device)
    dtype = parse_dtype(dtype or cfg.dtype)
    place(ckpt.model, tier, device, dtype, reads=stored_tensors(ckpt) if tier == "disk" else None,
          stamps=ckpt.stamps)
    model = copy_into(ckpt, blocks=tier != "disk")
    model.path = str(root)
    model.chat_template, model.special_tokens = read_template(root)
    if (root / "tokenizer.json").exists():
        from ctxprobe.probes import load_tokenizer

        model.tokenizer = load_tokenizer(str(root))
    return model


def _load_device(device) -> torch.device:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():   # else torch's AssertionError, deep in a copy
        built = "" if torch.backends.cuda.is_built() else f" (this torch, {torch.__version__}, is built without CUDA)"
        raise UserError(f"device {str(device)!r}: no CUDA device on this machine{built}; "
                        "load with device='cpu', or device=None to take CUDA only where there is one")
    return device


def pick_device(device: str | None) -> str:
    """--device as the device load_model would pick, named with its index (cuda:0), known before
    loading; UserError (not a torch traceback) for one this machine lacks or the runner cannot use."""
    try:
        d = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device; use cuda, cuda:N or cpu") from None
    if d.type not in ("cuda", "cpu"):   # the runner's streams, pinned memory and kernels are CUDA's or the CPU's
        raise UserError(f"--device {device}: the runner supports cuda and cpu; use --device cuda, cuda:N or cpu")
    if d.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device on this machine; use --device cpu")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                        f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return str(d)
