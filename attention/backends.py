"""Kernels that return (out, lse) for one (query block, key span) pair.

Every backend implements the same three calls on q [B, Hq, Tq, Dk], k [B, Hkv, Tk, Dk],
v [B, Hkv, Tk, Dv]:
    full(q, k, v, scale)          every query sees every key
    diag(q, k, v, scale)          causal, top-left aligned: query i sees keys j <= i
    masked(q, k, v, scale, mask)  mask [Tq, Tk] bool, True = visible
each -> out [B, Hq, Tq, Dv] (q's dtype), lse [B, Hq, Tq] float32, -inf and out 0 for empty rows.
Fused kernels that need one head dim for q, k and v get Dv != Dk through `same_head_dims`
(zero padding, exact); the reference math takes any Dv.

Backends: "reference" (float32 math, the oracle), "torch" (PyTorch's fused ops that return the
log-sum-exp: the CPU flash op; on CUDA cuDNN, flash, memory-efficient, picked by a one-time
self-check per dtype/head dim), "flash_attn" (Dao-AILab FA2 / FA3 / FA4 when importable).
"""

from __future__ import annotations

import functools
import importlib
import inspect

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


# ---------------------------------------------------------------- reference (float32 math)

def _math(q, k, v, scale, mask=None):
    """Grouped-query math without repeating K/V: q heads are viewed as [Hkv, G]."""
    B, Hq, Tq, D = q.shape
    Hkv = k.shape[1]
    qf = q.float().reshape(B, Hkv, Hq // Hkv, Tq, D)
    s = torch.einsum("bhgqd,bhkd->bhgqk", qf, k.float()) * scale
    if mask is not None:
        s = s.masked_fill(~mask, NEG_INF)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.unsqueeze(-1))
    p = torch.nan_to_num(p, nan=0.0)  # rows with no visible key: exp(-inf - -inf)
    out = torch.einsum("bhgqk,bhkd->bhgqd", p, v.float())
    return out.reshape(B, Hq, Tq, v.shape[3]).to(q.dtype), lse.reshape(B, Hq, Tq)


def is_leading_columns(v: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether v is k[..., :Dv], a view of the same memory (MLA's values are the latent part of
    its keys): then k itself can stand for v padded, with no copy."""
    return (v.dim() == k.dim() and v.shape[:-1] == k.shape[:-1] and v.shape[-1] <= k.shape[-1]
            and v.data_ptr() == k.data_ptr() and v.stride() == k.stride() and v.dtype == k.dtype)


def same_head_dims(run, q, k, v, *args):
    """run(q, k, v, *args) for a kernel that needs one head dim for q, k and v, with Dv != Dk.

    Dv < Dk: v gets Dk - Dv extra columns and the output is cut back to Dv (what fills them never
    reaches out[..., :Dv], so when v is k's leading columns, k itself is passed). Dv > Dk: q and k
    get zero columns, which add 0 to every score. Exact either way; costs the padded work."""
    Dk, Dv = q.shape[3], v.shape[3]
    if Dk == Dv:
        return run(q, k, v, *args)
    if Dv < Dk:
        wide_v = k if is_leading_columns(v, k) else F.pad(v, (0, Dk - Dv))
        out, lse = run(q, k, wide_v, *args)
        return out[..., :Dv], lse
    return run(F.pad(q, (0, Dv - Dk)), F.pad(k, (0, Dv - Dk)), v, *args)


def _diag_mask(Tq, Tk, device):
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril()


class ReferenceKernels:
    name = "reference"

    def full(self, q, k, v, scale):
        return _math(q, k, v, scale)

    def diag(self, q, k, v, scale):
        return _math(q, k, v, scale, _diag_mask(q.shape[2], k.shape[2], q.device))

    def masked(self, q, k, v, scale, mask):
        return _math(q, k, v, scale, mask)


def _clear_empty_rows(out, lse, mask):
    """Fused ops give lse 0 (or +inf) for rows whose mask hides every key; make them empty."""
    has_key = mask.any(dim=-1)  # [Tq]
    lse = torch.where(has_key, lse, torch.full_like(lse, NEG_INF))
    out = torch.where(has_key[:, None], out, torch.zeros_like(out))
    return out, lse


# ---------------------------------------------------------------- torch on CPU

class TorchCPUKernels:
    """aten::_scaled_dot_product_flash_attention_for_cpu: returns logsumexp [B, H, Tq] float32,
    handles Hq a multiple of Hkv natively, is_causal top-left; float masks only (same dtype as q);
    one head dim for q, k and v (torch 2.13), so Dv != Dk goes through same_head_dims."""

    name = "torch"

    @staticmethod
    def op(q, k, v, causal, scale, bias=None):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, attn_mask=bias, scale=scale)[:2]
        return out, lse.float()

    def full(self, q, k, v, scale):
        return same_head_dims(self.op, q, k, v, False, scale)

    def diag(self, q, k, v, scale):
        return same_head_dims(self.op, q, k, v, True, scale)

    def masked(self, q, k, v, scale, mask):
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, NEG_INF)
        out, lse = same_head_dims(self.op, q, k, v, False, scale, bias)
        return _clear_empty_rows(out, lse, mask)


# ---------------------------------------------------------------- torch on CUDA

def square_diag(diag_fn, full_fn, q, k, v, scale):
    """A diagonal span has Tk <= Tq keys. Kernels disagree on causal alignment when Tq != Tk
    (SDPA documents top-left, flash-attn >= 2.1 is bottom-right), so give them only the square
    part; queries past the last key see every key of the span (an unmasked call)."""
    Tq, Tk = q.shape[2], k.shape[2]
    assert Tk <= Tq, "a diagonal span never has more keys than queries"
    if Tq == Tk:
        return diag_fn(q, k, v, scale)
    out_a, lse_a = diag_fn(q[:, :, :Tk], k, v, scale)
    out_b, lse_b = full_fn(q[:, :, Tk:], k, v, scale)
    return torch.cat([out_a, out_b], dim=2), torch.cat([lse_a, lse_b], dim=2)


def _fold_groups(q, Hkv):
    """[B, Hq, Tq, D] -> [B, Hkv, G*Tq, D]: grouped queries share K/V, so for an unmasked span
    they can ride along the query axis instead of repeating K/V (a view when q is contiguous)."""
    B, Hq, Tq, D = q.shape
    return q.reshape(B, Hkv, (Hq // Hkv) * Tq, D)


def _unfold(out, lse, Hq, Tq):
    B, Hkv, _, D = out.shape
    return out.reshape(B, Hq, Tq, D), lse.reshape(B, Hq, Tq)


def _cudnn(q, k, v, scale, causal):
    out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
        q, k, v, None, True, 0.0, causal, False, scale=scale)[:2]
    return out, lse.reshape(lse.shape[0], lse.shape[1], -1)[..., : q.shape[2]]  # [B,H,Tq,1] quirk


def _flash(q, k, v, scale, causal):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)[:2]
    return out, lse


def _efficient(q, k, v, scale, causal):
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, None, True, 0.0, causal, scale=scale)[:2]
    return out, lse[..., : q.shape[2]]  # lse is padded to a multiple of 32 rows


CUDA_OPS = {"cudnn": _cudnn, "flash": _flash, "efficient": _efficient}


@functools.lru_cache(maxsize=None)
def pick_cuda_op(device: str, dtype: torch.dtype, head_dim: int, v_head_dim: int | None = None) -> str | None:
    """First of cuDNN, flash, memory-efficient that runs and matches the reference on a small
    self-check for this device/dtype/head dims (None: none does; with Dv != Dk the caller pads to
    one head dim, else falls back to reference math). Both calls attend makes are checked: a
    square causal diagonal, and an unmasked span with more queries than keys, neither a multiple
    of 64 (grouped queries folded along the query axis)."""
    v_head_dim = head_dim if v_head_dim is None else v_head_dim
    g = torch.Generator(device=device).manual_seed(0)
    scale = head_dim ** -0.5
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    cases = []
    for causal, Tq, Tk in ((True, 96, 96), (False, 200, 136)):
        q = torch.randn(1, 2, Tq, head_dim, device=device, dtype=dtype, generator=g)
        k = torch.randn(1, 2, Tk, head_dim, device=device, dtype=dtype, generator=g)
        v = torch.randn(1, 2, Tk, v_head_dim, device=device, dtype=dtype, generator=g)
        cases.append((q, k, v, causal, _math(q, k, v, scale, _diag_mask(Tq, Tk, device) if causal else None)))

    def passes(fn) -> bool:
        for q, k, v, causal, (ref_out, ref_lse) in cases:
            out, lse = TorchCUDAKernels._normalized(fn(q, k, v, scale, causal))
            if out.shape != ref_out.shape or lse.shape != ref_lse.shape:
                return False
            # NaN compares False: a kernel that returns NaN fails too.
            if not ((out.float() - ref_out.float()).abs().max().item() <= tol * 4
                    and (lse - ref_lse).abs().max().item() <= tol * 4):
                return False
        return True

    for name, fn in CUDA_OPS.items():
        try:
            if passes(fn):
                return name
        except RuntimeError:
            continue
    return None


class TorchCUDAKernels:
    name = "torch"

    def __init__(self, op_name: str | None = None):
        self.op_name = op_name  # None: self-checked pick per dtype/head dim

    def _run(self, q, k, v, scale, causal):
        if q.shape[-1] != v.shape[-1]:
            return self._run_unequal(q, k, v, scale, causal)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        if self.op_name is not None:  # forced: let its error surface
            return self._normalized(CUDA_OPS[self.op_name](q, k, v, scale, causal))
        picked = pick_cuda_op(str(q.device), q.dtype, q.shape[-1])
        names = [picked] + [n for n in CUDA_OPS if n != picked] if picked else []
        for name in names:  # a kernel may still refuse one shape (e.g. a single query)
            try:
                return self._normalized(CUDA_OPS[name](q, k, v, scale, causal))
            except RuntimeError:
                continue
        return _math(q, k, v, scale, _diag_mask(q.shape[2], k.shape[2], q.device) if causal else None)

    def _run_unequal(self, q, k, v, scale, causal):
        """Dv != Dk: the kernel as it is when it takes these dims (forced, or passing the self-check
        for them; cuDNN and memory-efficient may), else padded to one head dim (same_head_dims)."""
        native = self.op_name or pick_cuda_op(str(q.device), q.dtype, q.shape[-1], v.shape[-1])
        if native is not None:
            try:
                return self._normalized(CUDA_OPS[native](q.contiguous(), k.contiguous(), v.contiguous(),
                                                         scale, causal))
            except RuntimeError:
                pass
        return same_head_dims(self._run, q, k, v, scale, causal)

    @staticmethod
    def _normalized(result):
        out, lse = result
        lse = lse.float()
        return out, torch.where(torch.isposinf(lse), torch.full_like(lse, NEG_INF), lse)

    def full(self, q, k, v, scale):
        Hq, Tq, Hkv = q.shape[1], q.shape[2], k.shape[1]
        if Hq == Hkv:
            return self._run(q, k, v, scale, False)
        out, lse = self._run(_fold_groups(q.contiguous(), Hkv), k, v, scale, False)
        return _unfold(out, lse, Hq, Tq)

    def diag(self, q, k, v, scale):
        return square_diag(self._diag_square, self.full, q, k, v, scale)

    def _diag_square(self, q, k, v, scale):
        G = q.shape[1] // k.shape[1]
        if G > 1:  # causal rows differ per query, so folding is impossible: repeat this span only
            k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
        return self._run(q, k, v, scale, True)

    def masked(self, q, k, v, scale, mask):
        return _math(q, k, v, scale, mask)


# ---------------------------------------------------------------- flash-attn (Dao-AILab)

def flash_attn_module():
    """(flavour, flash_attn_func) for the first importable of FA4 cute, FA3, FA2; else None."""
    for flavour, module in (("fa4", "flash_attn.cute"), ("fa3", "flash_attn_interface"), ("fa2", "flash_attn")):
        try:
            mod = importlib.import_module(module)
        except Exception:  # ImportError, or a build that fails to load its CUDA library
            continue
        if hasattr(mod, "flash_attn_func"):
            return flavour, mod.flash_attn_func
    return None


def lse_request(func) -> dict:
    """The keyword that makes a flash_attn_func return its log-sum-exp: `return_attn_probs`
    (FA2, FA3) or `return_lse` (FA4); none for an early FA3 that always returns it."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):  # a builtin without a signature: assume the FA2/FA3 keyword
        return {"return_attn_probs": True}
    for name in ("return_lse", "return_attn_probs"):
        if name in params:
            return {name: True}
    return {}


class FlashAttnKernels:
    """flash-attn takes [B, T, H, D], handles GQA natively, aligns causal bottom-right and
    gives lse = +inf for empty rows; the diagonal is passed to it square (square_diag), and
    Dv != Dk padded to one head dim (same_head_dims)."""

    name = "flash_attn"

    def __init__(self):
        found = flash_attn_module()
        if found is None:
            raise ValueError("backend 'flash_attn' needs the flash-attn package "
                             "(pip install flash-attn); use backend='torch' or 'auto'")
        self.flavour, self.func = found
        self.lse_kwargs = lse_request(self.func)

    def _run(self, q, k, v, scale, causal):
        # FA2 needs one head dim for q, k and v; FA3/FA4 take only some (Dk, Dv) pairs: pad (exact).
        return same_head_dims(self._run_same_dims, q, k, v, scale, causal)

    def _run_same_dims(self, q, k, v, scale, causal):
        t = lambda x: x.transpose(1, 2).contiguous()  # noqa: E731
        if self.flavour == "fa2":
            res = self.func(t(q), t(k), t(v), 0.0, softmax_scale=scale, causal=causal, **self.lse_kwargs)
        else:
            res = self.func(t(q), t(k), t(v), softmax_scale=scale, causal=causal, **self.lse_kwargs)
        # FA2 -> (out, lse, probs); FA3 -> (out, lse) (an early FA3 always, later ones only when
        # asked); FA4 -> (out, lse), lse None unless asked. A bare tensor is out alone.
        out, lse = (res, None) if isinstance(res, torch.Tensor) else (res[0], res[1])
        if lse is None:
            raise RuntimeError(f"flash-attn ({self.flavour}) returned no log-sum-exp; "
                               "use backend='torch' or another flash-attn version")
        lse = lse.float()[..., : q.shape[2]]
        lse = torch.where(torch.isposinf(lse), torch.full_like(lse, NEG_INF), lse)
        return out.transpose(1, 2), lse

    def full(self, q, k, v, scale):
        return self._run(q, k, v, scale, False)

    def diag(self, q, k, v, scale):
        return square_diag(lambda *a: self._run(*a, True), self.full, q, k, v, scale)

    def masked(self, q, k, v, scale, mask):
        return _math(q, k, v, scale, mask)


# ---------------------------------------------------------------- choosing

BACKENDS = ("auto", "reference", "torch", "flash_attn", "torch:cudnn", "torch:flash", "torch:efficient")
_CPU_FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def kernels_for(backend: str, device: torch.device, dtype: torch.dtype):
    """The kernel set for a backend name on this device and dtype ("auto": fastest that fits)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "reference":
        return ReferenceKernels()
    if backend.startswith("torch:"):  # one CUDA op forced, e.g. to benchmark it
        if device.type != "cuda":
            raise ValueError(f"backend {backend!r} names a CUDA kernel; use 'torch' on {device.type}")
        return TorchCUDAKernels(backend.split(":", 1)[1])
    if backend == "flash_attn":
        if device.type != "cuda":
            raise ValueError("backend 'flash_attn' runs on CUDA tensors only; use 'torch' or 'reference'")
        return FlashAttnKernels()
    if device.type == "cpu":
        if dtype in _CPU_FUSED_DTYPES:
            return TorchCPUKernels()
        if backend == "torch":
            raise ValueError(f"backend 'torch' has no fused CPU kernel for {dtype}; use 'reference'")
        return ReferenceKernels()
    if device.type == "cuda":
        return TorchCUDAKernels()
    if backend == "torch":
        raise ValueError(f"backend 'torch' supports cpu and cuda tensors, not {device.type}; use 'reference'")
    return ReferenceKernels()


def available_backends(device: torch.device) -> list[str]:
    names = ["reference", "torch"] if device.type in ("cpu", "cuda") else ["reference"]
    if device.type == "cuda":
        names += [f"torch:{op}" for op in CUDA_OPS]
        if flash_attn_module() is not None:
            names.append("flash_attn")
    return names
