"""Iterate a KVStore's blocks on the compute device, copying the next block while this one computes.

On CUDA with a host or disk tier: two device staging buffers; block j+2 is copied into the
buffer block j used, on a side stream, once the compute stream has recorded that it is done
with it (events, never a device-wide sync). Each block is one contiguous copy from pinned
memory; disk blocks (and an unfilled fp8 block) go through two pinned bounce buffers first.
fp8 blocks are copied as fp8 and upcast on the compute stream. On CPU, or for the device tier,
iteration is synchronous and copies nothing it does not have to.

Yields (start, k [1, Hkv, n, Dk], v [1, Hkv, n, Dv]) in the store's dtype. The tensors may be
views of a staging buffer: use them before asking for the next block.
"""

from __future__ import annotations

import torch

from .kv_store import KVStore, dequantize_fp8


class BlockStream:
    def __init__(self, store: KVStore, block_ids, device=None):
        self.store = store
        self.block_ids = list(block_ids)
        self.device = torch.device(device) if device is not None else store.device

    def _upcast(self, raw, scale, n):
        """raw: a block's flat buffer on the compute device -> k [1, Hkv, n, Dk], v [1, Hkv, n, Dv]
        in store.dtype (views of raw unless fp8)."""
        k, v = (part[:, :n] for part in self.store.split(raw))
        if scale is not None:
            k = dequantize_fp8(k, scale[0], self.store.dtype)
            # values_in_keys: V stays a view of K (kernels then need no copy of it, see same_head_dims)
            v = k[..., :v.shape[-1]] if self.store.values_in_keys else dequantize_fp8(v, scale[1], self.store.dtype)
        return k.unsqueeze(0), v.unsqueeze(0)

    def __iter__(self):
        streamed = self.device.type == "cuda" and self.store.tier != "device"
        return self._iter_cuda() if streamed else self._iter_sync()

    def _iter_sync(self):
        for i in self.block_ids:
            raw, scale, n = self.store.block_buffer(i)
            raw = raw.to(self.device)  # no-op when the block already lives there
            scale = scale.to(self.device) if scale is not None else None
            k, v = self._upcast(raw, scale, n)
            yield self.store.block_range(i)[0], k, v

    def _iter_cuda(self):
        store, device = self.store, self.device
        if not self.block_ids:
            return
        scales = store.scales()
        scales = scales.to(device) if scales is not None else None  # one small upload, before streaming
        compute = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device=device)
        staging = [torch.empty(store.block_numel, dtype=store.storage_dtype, device=device) for _ in range(2)]
        # The allocator hands out staging memory ordered on the compute stream only: memory freed
        # there may still be read by queued kernels, so the side stream must not write before them.
        side.wait_stream(compute)
        bounce = [None, None]
        copied = [torch.cuda.Event(), torch.cuda.Event()]
        free = [torch.cuda.Event(), torch.cuda.Event()]
        free_recorded = [False, False]
        copy_issued = [False, False]
        meta = [None, None]

        def issue(j: int, slot: int):
            i = self.block_ids[j]
            raw, _, n = store.block_buffer(i)
            src = raw
            if not raw.is_pinned():  # disk (memory map) or an on-the-fly fp8 tail: stage in pinned memory
                if bounce[slot] is None:
                    bounce[slot] = torch.empty(store.block_numel, dtype=store.storage_dtype, pin_memory=True)
                if copy_issued[slot]:
                    copied[slot].synchronize()  # the previous copy out of this bounce buffer is done
                bounce[slot].copy_(raw)
                src = bounce[slot]
            with torch.cuda.stream(side):
                if free_recorded[slot]:
                    side.wait_event(free[slot])
                staging[slot].copy_(src, non_blocking=True)
                copied[slot].record(side)
            copy_issued[slot] = True
            meta[slot] = (i, n)

        for j in range(min(2, len(self.block_ids))):
            issue(j, j)
        try:
            for j in range(len(self.block_ids)):
                slot = j % 2
                compute.wait_event(copied[slot])
                i, n = meta[slot]
                k, v = self._upcast(staging[slot], scales[i] if scales is not None else None, n)
                yield store.block_range(i)[0], k, v
                free[slot].record(compute)
                free_recorded[slot] = True
                if j + 2 < len(self.block_ids):
                    issue(j + 2, slot)
        finally:
            # The caching allocator must not hand staging memory out before the side stream is done.
            for buf in staging:
                buf.record_stream(side)
