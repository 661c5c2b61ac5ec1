"""Quantized checkpoints, dequantized to the compute dtype at load (ctxprobe computes in bf16/fp32).

config.json's quantization_config.quant_method says which; both store a weight as two tensors:
  fp8    (DeepSeek-V3) `X.weight` float8_e4m3 [O, I] and `X.weight_scale_inv` float32
         [ceil(O/bo), ceil(I/bi)] for blocks of bo x bi (weight_block_size, 128 x 128):
         weight = fp8 value * its block's scale.
  mxfp4  (gpt-oss experts) `X_blocks` uint8 [.., O, G, 16] and `X_scales` uint8 [.., O, G]: each
         byte holds two 4-bit E2M1 codes (low nibble first), 32 codes per block of one output row
         share the scale 2^(s - 127); dequantized [.., O, G*32] and transposed to [.., G*32, O],
         the layout the unquantized checkpoint stores.
Anything else is refused by name (read_quantization), so a checkpoint never loads as garbage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ctxprobe.errors import UserError

METHODS = ("fp8", "mxfp4")
FP8_SCALE = ".weight_scale_inv"
MX_BLOCKS, MX_SCALES = "_blocks", "_scales"
# E2M1 code -> value (code 8-15 are the negatives of 0-7)
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
QUANTIZED_DTYPES = ("F8_E4M3", "U8")


def read_quantization(cfg: dict, where: str) -> dict | None:
    """config.json's quantization_config -> {"method": "fp8", "block": (bo, bi)} | {"method": "mxfp4"}
    | None; a UserError naming a method ctxprobe cannot dequantize."""
    q = cfg.get("quantization_config")
    if q is None:
        return None
    method = q.get("quant_method") if isinstance(q, dict) else q
    if method not in METHODS:
        raise UserError(f"{where}: quantization {method!r} is not supported; ctxprobe dequantizes "
                        f"{' and '.join(METHODS)} at load; use an unquantized (bf16/fp16/fp32) checkpoint")
    if method == "mxfp4":
        return {"method": "mxfp4"}
    block = q.get("weight_block_size") or [128, 128]
    if not (isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
        raise UserError(f"{where}: fp8 'weight_block_size' must be two whole numbers, found {block}; fix config.json")
    if q.get("activation_scheme", "dynamic") != "dynamic":
        raise UserError(f"{where}: fp8 with activation_scheme {q.get('activation_scheme')!r} is not supported "
                        "(only dynamic, whose weights dequantize alone); use an unquantized checkpoint")
    return {"method": "fp8", "block": tuple(block)}


@dataclass(frozen=True)
class Packed:
    """One weight stored as values + scales: where both are, and its dequantized shape."""
    method: str
    values: tuple[Path, str]        # (file, key)
    scales: tuple[Path, str]
    shape: tuple                    # dequantized
    block: tuple | None = None      # fp8's (bo, bi)


def unpack_index(index: dict, quant: dict | None) -> tuple[dict, dict]:
    """index {file: (start, {key: (dtype, shape, offset)})} -> ({file: {key: shape}} with each
    quantized pair shown as the one weight it dequantizes to, {weight key: Packed})."""
    where = {key: (f, dtype, tuple(shape)) for f, (_, entries) in index.items()
             for key, (dtype, shape, _) in entries.items()}
    packed = {}
    if quant is not None:
        pairs = _fp8_pairs(where, quant["block"]) if quant["method"] == "fp8" else _mxfp4_pairs(where)
        packed = dict(pairs)
    used = {p.values[1] for p in packed.values()} | {p.scales[1] for p in packed.values()}
    shapes = {f: {} for f in index}
    for key, (f, dtype, shape) in where.items():
        if key in used:
            continue
        if dtype in QUANTIZED_DTYPES:
            raise UserError(f"{f}: tensor '{key}' is stored as {dtype} without the scales that would dequantize "
                            f"it{'' if quant else ' and config.json names no quantization'}; "
                            "re-download the checkpoint")
        shapes[f][key] = shape
    for key, p in packed.items():
        shapes[p.values[0]][key] = p.shape
    return shapes, packed


def _fp8_pairs(where: dict, block: tuple):
    for key, (f, dtype, shape) in where.items():
        if not key.endswith(FP8_SCALE):
            continue
        weight = key.removesuffix("_scale_inv")
        if weight not in where or where[weight][1] != "F8_E4M3":
            raise UserError(f"{f}: '{key}' scales no float8_e4m3 '{weight}'; re-download the checkpoint")
        wf, _, wshape = where[weight]
        want = tuple(math.ceil(n / b) for n, b in zip(wshape, block))
        if len(wshape) != 2 or shape != want:
            raise UserError(f"{f}: '{key}' has shape {list(shape)}, expected {list(want)} for '{weight}' "
                            f"{list(wshape)} in blocks of {block[0]}x{block[1]}; re-download the checkpoint")
        yield weight, Packed("fp8", (wf, weight), (f, key), wshape, block)


def _mxfp4_pairs(where: dict):
    for key, (f, dtype, shape) in where.items():
        if not key.endswith(MX_BLOCKS):
            continue
        name = key.removesuffix(MX_BLOCKS)
        scales = name + MX_SCALES
        if scales not in where:
            raise UserError(f"{f}: '{key}' has no '{scales}' beside it; re-download the checkpoint")
        sf, _, sshape = where[scales]
        if len(shape) < 3 or shape[-1] != 16 or sshape != shape[:-1]:
            raise UserError(f"{f}: '{key}' {list(shape)} and '{scales}' {list(sshape)} are not MXFP4 blocks "
                            "[.., rows, groups, 16] and scales [.., rows, groups]; re-download the checkpoint")
        *prefix, rows, groups, _ = shape
        yield name, Packed("mxfp4", (f, key), (sf, scales), (*prefix, groups * 32, rows))


def dequantize(p: Packed, read, dtype: torch.dtype) -> torch.Tensor:
    """read(file, key) -> stored tensor; -> the weight in `dtype`."""
    values, scales = read(*p.values), read(*p.scales)
    if p.method == "fp8":
        return dequantize_fp8(values, scales, p.block).to(dtype)
    return dequantize_mxfp4(values, scales).to(dtype)


def dequantize_fp8(w_OI: torch.Tensor, scale_inv: torch.Tensor, block: tuple) -> torch.Tensor:
    """float8 [O, I] * the float32 scale of its (bo x bi) block -> float32 [O, I]."""
    O, I = w_OI.shape
    scale = scale_inv.float().repeat_interleave(block[0], 0)[:O].repeat_interleave(block[1], 1)[:, :I]
    return w_OI.float() * scale


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """uint8 blocks [.., O, G, 16] and scales [.., O, G] -> float32 [.., G*32, O]."""
    table = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)
    codes = torch.stack([blocks & 0x0F, blocks >> 4], dim=-1).flatten(-2).long()    # [.., O, G, 32]
    values = table[codes] * torch.exp2(scales.float() - 127)[..., None]     # powers of two: exact
    return values.flatten(-2).transpose(-1, -2).contiguous()
