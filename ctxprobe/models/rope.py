"""Rotary position embeddings: frequencies (default and llama3-scaled) and the two pairings.

Shapes: T tokens, H heads, Dh head dim (even). Angles are computed in float32 from absolute
positions, as the reference implementations do; the rotation runs in float32 and casts back.

Two ways to pair the Dh dims into rotation planes:
  half-split     (Llama, Mixtral, Qwen3):  plane i = (x[i], x[i + Dh/2])
  adjacent-pair  (Llama 4, "interleaved"): plane i = (x[2i], x[2i + 1])
"""

from __future__ import annotations

import math

import torch


def inv_freq(head_dim: int, theta: float, scaling: dict | None = None, device=None) -> torch.Tensor:
    """[Dh/2] float32 inverse frequencies, llama3-scaled when `scaling` is given; cached per device
    so that a forward pass makes no host-to-device copy for them."""
    device = torch.device(device or "cpu")
    key = (head_dim, float(theta), tuple(sorted(scaling.items())) if scaling else None, str(device))
    if key not in _FREQ_CACHE:
        _FREQ_CACHE[key] = _inv_freq(head_dim, theta, scaling).to(device)
    return _FREQ_CACHE[key]


_FREQ_CACHE: dict = {}


def _inv_freq(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    cpu = torch.device("cpu")  # explicit: models are built under a meta-device context
    freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=cpu).float() / head_dim))
    if scaling is None:
        return freq
    factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / freq
    # Long wavelengths (> old_len / lo) are slowed by `factor`, short ones (< old_len / hi) kept,
    # and the band between is interpolated smoothly.
    slowed = torch.where(wavelen > old_len / lo, freq / factor, freq)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    blended = (1 - smooth) * slowed / factor + smooth * slowed
    middle = ~(wavelen < old_len / hi) & ~(wavelen > old_len / lo)
    return torch.where(middle, blended, slowed)


def angles(pos_T: torch.Tensor, freq: torch.Tensor) -> torch.Tensor:
    """[T, Dh/2] float32 rotation angles for absolute positions."""
    return pos_T.to(torch.float32)[:, None] * freq.to(pos_T.device)[None, :]


def rotate_half_split(x_HTD: torch.Tensor, ang_TF: torch.Tensor) -> torch.Tensor:
    """Rotate plane (x[i], x[i + Dh/2]) by ang[:, i]. x [..., T, Dh]."""
    cos, sin = ang_TF.cos(), ang_TF.sin()
    x = x_HTD.float()
    x1, x2 = x.chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x_HTD.dtype)


def rotate_adjacent_pairs(x_HTD: torch.Tensor, ang_TF: torch.Tensor) -> torch.Tensor:
    """Rotate plane (x[2i], x[2i + 1]) by ang[:, i]. x [..., T, Dh]."""
    cos, sin = ang_TF.cos(), ang_TF.sin()
    x = x_HTD.float().unflatten(-1, (-1, 2))
    x1, x2 = x[..., 0], x[..., 1]
    out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    return out.to(x_HTD.dtype)
