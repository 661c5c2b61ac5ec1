"""Rotary position embeddings: frequencies (default, llama3- and YaRN-scaled) and the two pairings.

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
    """[Dh/2] float32 inverse frequencies, scaled when `scaling` is given (YaRN when its rope_type is
    "yarn", else llama3); cached per device so that a forward pass makes no host-to-device copy for them."""
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
    if scaling.get("rope_type") == "yarn":
        return _yarn_inv_freq(freq, head_dim, theta, scaling)
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


def _yarn_inv_freq(freq: torch.Tensor, head_dim: int, theta: float, scaling: dict) -> torch.Tensor:
    """YaRN (arXiv 2309.00071): dims that turn more than beta_fast times over the original context
    keep their frequency, those turning fewer than beta_slow times are slowed by `factor`, and a
    linear ramp blends the dims between."""
    factor, old_len = scaling["factor"], scaling["original_max_position_embeddings"]

    def dim_of(turns: float) -> float:   # the dim index whose wavelength fits `turns` times in old_len
        return head_dim * math.log(old_len / (turns * 2 * math.pi)) / (2 * math.log(theta))

    lo, hi = dim_of(scaling.get("beta_fast") or 32), dim_of(scaling.get("beta_slow") or 1)
    if scaling.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, head_dim - 1)
    hi = hi + 0.001 if lo == hi else hi
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)
    return freq / factor * ramp + freq * (1 - ramp)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction 0.1 * mscale * ln(factor) + 1 (1 when not stretched)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def attention_factor(scaling: dict | None) -> float:
    """What YaRN multiplies the rotated q and k by (so q.k by its square); 1 for other scalings."""
    if not scaling or scaling.get("rope_type") != "yarn":
        return 1.0
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    factor, m, m_all = scaling["factor"], scaling.get("mscale"), scaling.get("mscale_all_dim")
    if m and m_all:
        return yarn_mscale(factor, m) / yarn_mscale(factor, m_all)
    return yarn_mscale(factor)


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
