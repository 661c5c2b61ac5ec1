"""The hidden states of every prompt token, parked off the device between layers.

Layer l reads chunk [s, e) of the buffer, computes, and writes the result back in place: chunk i's
output depends only on chunk i's input and on keys already in the layer's KV, so one buffer
suffices. Tiers: host memory (pinned under CUDA, so each chunk is one DMA) or a memory-mapped file
on disk when host memory is short. Under CUDA the next chunk is copied to the device on one side
stream while the current one computes (double buffering), and results go back on another.

Shapes: T prompt tokens, D hidden size.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from ctxprobe.runner.pinned import page_locked, unregister


class HiddenBuffer:
    def __init__(self, n_tokens: int, dim: int, dtype, *, tier: str = "host", device="cpu",
                 offload_dir: str | None = None):
        assert tier in ("host", "disk"), tier
        self.n, self.dim, self.dtype, self.tier = n_tokens, dim, dtype, tier
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.bytes_moved = 0   # host <-> device traffic
        self._registered = False   # buf_TD page-locked by cudaHostRegister (unregistered in close)
        if tier == "host" and self.cuda:
            self.buf_TD, self._registered = page_locked((n_tokens, dim), dtype)
        elif tier == "host":
            self.buf_TD = torch.empty(n_tokens, dim, dtype=dtype)
        else:
            if offload_dir is None:
                raise ValueError("the disk tier for hidden states needs an offload directory: pass --offload-dir")
            os.makedirs(offload_dir, exist_ok=True)
            # Unlinked at once: the map keeps the bytes, and a killed process leaves nothing on disk.
            fd, name = tempfile.mkstemp(prefix="hidden-", suffix=".bin", dir=offload_dir)
            os.unlink(name)
            itemsize = torch.finfo(dtype).bits // 8
            with os.fdopen(fd, "w+b") as f:
                f.truncate(max(1, n_tokens * dim * itemsize))   # mmap refuses an empty file
                self._mm = np.memmap(f, dtype=np.uint8, mode="r+", shape=(n_tokens, dim * itemsize))
            self.buf_TD = torch.from_numpy(self._mm).view(dtype)   # [T, D], backed by the file
        # Copies run on their own streams so that they overlap compute: h2d for prefetches, d2h for
        # write-backs. Every read first waits for the write-backs (d2h) queued before it.
        self._h2d = torch.cuda.Stream(self.device) if self.cuda else None
        self._d2h = torch.cuda.Stream(self.device) if self.cuda else None
        self._pending = None   # (s, e, device tensor, event) prefetched on the h2d stream

    def write(self, s: int, x_TD: torch.Tensor):
        dst = self.buf_TD[s:s + x_TD.shape[0]]
        if x_TD.device == dst.device:
            dst.copy_(x_TD)
            return
        self.bytes_moved += x_TD.numel() * x_TD.element_size()
        if self.tier != "host":    # a memory map is pageable: a plain synchronous copy
            dst.copy_(x_TD)
            return
        self._d2h.wait_stream(torch.cuda.current_stream(self.device))   # x is computed
        with torch.cuda.stream(self._d2h):
            dst.copy_(x_TD, non_blocking=True)
        x_TD.record_stream(self._d2h)     # keep x's memory until the copy is done

    def read(self, s: int, e: int) -> torch.Tensor:
        """Chunk [s, e) on the device (a prefetched copy when `prefetch(s, e)` came first)."""
        if self._pending is not None and self._pending[:2] == (s, e):
            _, _, x, event = self._pending
            self._pending = None
            torch.cuda.current_stream(self.device).wait_event(event)
            x.record_stream(torch.cuda.current_stream(self.device))
            return x
        src = self.buf_TD[s:e]
        if src.device == self.device:
            return src.clone()
        self.bytes_moved += src.numel() * src.element_size()
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_stream(self._d2h)
        return src.to(self.device, non_blocking=self.cuda and self.tier == "host")

    def prefetch(self, s: int, e: int):
        """Start copying chunk [s, e) to the device on a side stream (CUDA only; a no-op on CPU)."""
        if not self.cuda:
            return
        stream = self._h2d
        stream.wait_stream(self._d2h)   # its host data must be written back first
        with torch.cuda.stream(stream):
            src = self.buf_TD[s:e]
            x = src.to(self.device, non_blocking=self.tier == "host")
            event = torch.cuda.Event()
            event.record(stream)
        self.bytes_moved += src.numel() * src.element_size()
        self._pending = (s, e, x, event)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def close(self):
        self._pending = None
        if self._registered:
            self._registered = False
            unregister(self.buf_TD, self.device)
        if self.tier == "disk" and hasattr(self, "_mm"):
            del self.buf_TD, self._mm   # the last reference to the map frees the file's bytes

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
