"""One layer's K/V in a storage tier, kept block-contiguous so that moving a block is one copy.

Tiers: "device" (tensors on the compute device), "host" (CPU memory, pinned when CUDA is
present), "disk" (one memory-mapped file in a directory the user names). Each block is one
contiguous buffer holding K [Hkv, block_size, Dk] then V [Hkv, block_size, Dv] for block_size
consecutive positions (flat, since Dv may differ from Dk; `split` views its two parts); the last
block may be partly filled. With `values_in_keys` (multi-head latent attention, whose values are
the latent that leads its keys: K = [latent | rope key], V = latent) a block holds K alone and V
is the view K[..., :Dv], so a token costs Hkv * Dk values, not Hkv * (Dk + Dv). Optional fp8 (e4m3) storage in the host and disk tiers halves the
traffic: each block keeps one float32 scale per (K or V, head), scale = amax / 448, and is
upcast on the compute device (attention/stream.py).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from .backends import is_leading_columns

TIERS = ("device", "host", "disk")
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value


def quantize_fp8(x: torch.Tensor):
    """[..., T, D] -> (fp8 [..., T, D], scale [...] float32) with x ~= fp8 * scale: one scale per
    leading index (e.g. [H, T, D] -> [H], per head)."""
    amax = x.float().abs().amax(dim=(-2, -1))
    scale = (amax / FP8_MAX).clamp_min(1e-12)
    q = (x.float() / scale[..., None, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp8 [..., T, D], scale [...] -> [..., T, D] in dtype."""
    return (q.float() * scale[..., None, None].float()).to(dtype)


class KVStore:
    """append(k, v) with k [Hkv, T, Dk] and v [Hkv, T, Dv] (or with a batch dim of 1); blocks are
    read by `attention.BlockStream`. head_dim is Dk; v_head_dim is Dv (default: Dk).
    values_in_keys: V is K[..., :Dv] and is not stored apart (append(k) or append(k, k[..., :Dv]))."""

    def __init__(self, n_kv_heads: int, head_dim: int, *, v_head_dim: int | None = None, tier: str = "device",
                 block_size: int = 16384, dtype: torch.dtype = torch.bfloat16, device=None, path=None,
                 fp8: bool = False, values_in_keys: bool = False):
        if tier not in TIERS:
            raise ValueError(f"unknown KV tier {tier!r}; choose one of {', '.join(TIERS)}")
        if block_size < 1:
            raise ValueError(f"block_size must be a positive number of tokens, got {block_size}")
        if fp8 and tier == "device":
            raise ValueError("fp8 KV storage is for the 'host' and 'disk' tiers (it halves copy traffic); "
                             "use tier='host' or fp8=False")
        if tier == "disk" and path is None:
            raise ValueError("the 'disk' KV tier needs path= (a directory for its memory-mapped file)")
        v_head_dim = head_dim if v_head_dim is None else v_head_dim
        if head_dim < 1 or v_head_dim < 1:
            raise ValueError(f"head dims must be positive, got head_dim {head_dim}, v_head_dim {v_head_dim}")
        if values_in_keys and v_head_dim > head_dim:
            raise ValueError(f"values_in_keys takes V as the first v_head_dim columns of K, so v_head_dim "
                             f"({v_head_dim}) must be at most head_dim ({head_dim})")
        self.values_in_keys = values_in_keys
        self.n_kv_heads, self.head_dim, self.v_head_dim = n_kv_heads, head_dim, v_head_dim
        self.block_size = block_size
        self.tier, self.dtype, self.fp8 = tier, dtype, fp8
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.storage_dtype = FP8 if fp8 else dtype
        self.pinned = tier == "host" and torch.cuda.is_available()
        self.length = 0
        self._blocks: list[torch.Tensor | None] = []  # flat [block_numel] storage_dtype; None on disk
        self._scales: list[torch.Tensor] = []  # fp8 only: [2, Hkv] float32 per committed block
        self._tail = None  # fp8 only: the unfilled last block in full precision, quantized when full
        self._file = None
        if tier == "disk":
            os.makedirs(path, exist_ok=True)
            # Unlinked at once: the bytes live while the file is open or mapped, and a process
            # killed by a signal (torchrun's SIGTERM to the other ranks) leaves nothing on disk.
            fd, name = tempfile.mkstemp(prefix="kv-", suffix=".bin", dir=path)
            os.unlink(name)
            self._file = os.fdopen(fd, "r+b")

    # ------------------------------------------------------------ layout
    @property
    def block_numel(self) -> int:
        """Values in one block: K then V, Hkv * block_size * (Dk + Dv); K alone with values_in_keys."""
        return self.n_kv_heads * self.block_size * (self.head_dim + (0 if self.values_in_keys else self.v_head_dim))

    @property
    def block_bytes(self) -> int:
        return self.block_numel * torch.empty((), dtype=self.storage_dtype).element_size()

    def split(self, buffer: torch.Tensor):
        """A block's flat buffer (stored, staged on a device, any dtype) -> views
        k [Hkv, block_size, Dk], v [Hkv, block_size, Dv] (with values_in_keys, k[..., :Dv])."""
        n_k = self.n_kv_heads * self.block_size * self.head_dim
        k = buffer[:n_k].view(self.n_kv_heads, self.block_size, self.head_dim)
        if self.values_in_keys:
            return k, k[..., :self.v_head_dim]
        return k, buffer[n_k:].view(self.n_kv_heads, self.block_size, self.v_head_dim)

    def __len__(self) -> int:
        return self.length

    @property
    def n_blocks(self) -> int:
        return -(-self.length // self.block_size)

    def block_range(self, i: int) -> tuple[int, int]:
        """Absolute positions [start, end) of block i (positions count from 0 at the first append)."""
        start = i * self.block_size
        return start, min(start + self.block_size, self.length)

    # ------------------------------------------------------------ writing
    def _new_block(self) -> torch.Tensor:
        """Add a block and return its buffer."""
        if self.tier == "device":
            block = torch.empty(self.block_numel, dtype=self.storage_dtype, device=self.device)
        elif self.tier == "host":
            block = torch.empty(self.block_numel, dtype=self.storage_dtype, pin_memory=self.pinned)
        else:
            # Disk blocks are mapped only while in use (_block): each mapping holds a file
            # descriptor, and a million-token store of many layers would pass the open-file limit.
            self._file.truncate((len(self._blocks) + 1) * self.block_bytes)
            block = None
        self._blocks.append(block)
        return self._block(len(self._blocks) - 1)

    def _block(self, i: int) -> torch.Tensor:
        """Block i's flat buffer: the tensor itself, or a fresh map of its bytes on disk."""
        if self._blocks[i] is not None:
            return self._blocks[i]
        mm = np.memmap(self._file, dtype=np.uint8, mode="r+", offset=i * self.block_bytes,
                       shape=(self.block_bytes,))
        return torch.from_numpy(mm).view(self.storage_dtype)

    def append(self, k: torch.Tensor, v: torch.Tensor | None = None) -> None:
        if self.values_in_keys:
            if v is not None and not is_leading_columns(v, k):
                raise ValueError("this KVStore has values_in_keys=True: V is read from K's first "
                                 f"{self.v_head_dim} columns; pass v=None or the view k[..., :{self.v_head_dim}]")
            v = k[..., :self.v_head_dim]
        elif v is None:
            raise ValueError("KVStore.append needs v (only a store with values_in_keys=True reads V from K)")
        if k.dim() == 4:
            if k.shape[0] != 1:
                raise ValueError(f"KVStore holds one sequence; got a batch of {k.shape[0]} in k {tuple(k.shape)}")
            k, v = k[0], v[0]
        if k.dim() != 3 or v.dim() != 3 or k.shape[1] != v.shape[1] \
                or (k.shape[0], k.shape[2], v.shape[0], v.shape[2]) != (self.n_kv_heads, self.head_dim,
                                                                        self.n_kv_heads, self.v_head_dim):
            raise ValueError(f"KVStore.append expects k [{self.n_kv_heads}, T, {self.head_dim}] and "
                             f"v [{self.n_kv_heads}, T, {self.v_head_dim}], got k {tuple(k.shape)}, v {tuple(v.shape)}")
        T, done = k.shape[1], 0
        while done < T:
            offset = self.length % self.block_size
            if offset == 0:
                self._open_block()
            n = min(T - done, self.block_size - offset)
            dst_k, dst_v = self.split(self._tail if self.fp8 else self._block(len(self._blocks) - 1))
            dst_k[:, offset:offset + n].copy_(k[:, done:done + n])
            if not self.values_in_keys:  # else dst_v is a view of what was just copied
                dst_v[:, offset:offset + n].copy_(v[:, done:done + n])
            done += n
            self.length += n
            if self.fp8 and self.length % self.block_size == 0:
                self._commit_fp8_tail()

    def _open_block(self):
        if self.fp8:
            self._tail = torch.zeros(self.block_numel, dtype=self.dtype)
        else:
            self._new_block()

    def _quantized_tail(self):
        """The fp8 tail block -> (flat fp8 buffer, scale [2, Hkv]): K and V quantized apart (with
        values_in_keys, K alone, and V's scale is K's)."""
        buffer = torch.empty(self.block_numel, dtype=FP8)
        parts = list(zip(self.split(self._tail), self.split(buffer)))
        scales = []
        for src, dst in parts[:1] if self.values_in_keys else parts:
            q, scale = quantize_fp8(src)
            dst.copy_(q)
            scales.append(scale)
        return buffer, torch.stack(scales * 2 if self.values_in_keys else scales)

    def _commit_fp8_tail(self):
        q, scale = self._quantized_tail()
        self._new_block().copy_(q)
        self._scales.append(scale)
        self._tail = None

    # ------------------------------------------------------------ reading
    def block_buffer(self, i: int):
        """(flat buffer [block_numel] in storage dtype, scale [2, Hkv] float32 or None, valid tokens):
        the one contiguous buffer to copy for block i.

        The buffer is the stored block itself (no copy), except for an unfilled fp8 block,
        which is quantized on the fly from its full-precision staging copy.
        """
        start, end = self.block_range(i)
        if not 0 <= i < self.n_blocks:
            raise IndexError(f"block {i} out of range: the store has {self.n_blocks} blocks")
        if self.fp8 and i == len(self._blocks):
            q, scale = self._quantized_tail()
            return q, scale, end - start
        scale = self._scales[i] if self.fp8 else None
        return self._block(i), scale, end - start

    def raw_block(self, i: int):
        """(k [Hkv, block_size, Dk], v [Hkv, block_size, Dv], scale [2, Hkv] float32 or None, valid
        tokens): views of block i's buffer in storage dtype (see block_buffer)."""
        buffer, scale, n = self.block_buffer(i)
        return (*self.split(buffer), scale, n)

    def scales(self) -> torch.Tensor | None:
        """[n_blocks, 2, Hkv] float32 scales of every block (fp8 only), for one upload to the device."""
        if not self.fp8:
            return None
        all_scales = list(self._scales)
        if self._tail is not None:
            all_scales.append(self._quantized_tail()[1])
        return torch.stack(all_scales) if all_scales else torch.empty(0, 2, self.n_kv_heads)

    def close(self) -> None:
        """Release the disk tier's file (the store is empty afterwards)."""
        self._blocks, self._scales, self._tail, self.length = [], [], None, 0
        if self._file is not None:
            self._file.close()   # maps still open keep their bytes until they are dropped
            self._file = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
