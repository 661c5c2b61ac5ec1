"""Layer weights that live off the device stream in one layer ahead of the compute.

When a block's parameters sit in host memory and the compute device is a GPU, `enter(l)` makes
block l's parameters device tensors (waiting for the copy started earlier) and starts copying
block l+1 on a side stream; `leave(l)` points the parameters back at their host copies so the
device copies can be freed. Host copies are pinned once so each tensor moves as one DMA.
When the weights are already on the device (or the device is the CPU) this is a no-op.
"""

from __future__ import annotations

import torch


class LayerWeights:
    def __init__(self, blocks, device):
        self.blocks, self.device = list(blocks), torch.device(device)
        self.bytes_moved = 0
        self.active = self.device.type == "cuda" and any(
            p.device != self.device for b in self.blocks for p in _params(b))
        self._host: dict[int, list[torch.Tensor]] = {}
        self._ready: dict[int, tuple[list[torch.Tensor], torch.cuda.Event]] = {}
        self._stream = torch.cuda.Stream(self.device) if self.active else None

    def _fetch(self, layer: int):
        if layer >= len(self.blocks) or layer in self._ready:
            return
        params = list(_params(self.blocks[layer]))
        if layer not in self._host:
            self._host[layer] = [p.data if p.data.is_pinned() else p.data.pin_memory() for p in params]
        with torch.cuda.stream(self._stream):
            dev = [h.to(self.device, non_blocking=True) for h in self._host[layer]]
            event = torch.cuda.Event()
            event.record(self._stream)
        self.bytes_moved += sum(h.numel() * h.element_size() for h in self._host[layer])
        self._ready[layer] = (dev, event)

    def enter(self, layer: int):
        if not self.active:
            return
        self._fetch(layer)
        dev, event = self._ready.pop(layer)
        torch.cuda.current_stream(self.device).wait_event(event)
        for p, d in zip(_params(self.blocks[layer]), dev):
            d.record_stream(torch.cuda.current_stream(self.device))
            p.data = d
        self._fetch(layer + 1)

    def leave(self, layer: int):
        if not self.active:
            return
        for p, h in zip(_params(self.blocks[layer]), self._host[layer]):
            p.data = h

    def restore(self):
        """Every block back on its host copy and prefetches dropped (after an error, say: a block
        left pointing at device copies would make the next run pin a CUDA tensor and fail)."""
        for layer in list(self._host):
            self.leave(layer)
        self._ready.clear()


def _params(block):
    return list(block.parameters()) + list(block.buffers()) if hasattr(block, "parameters") else []
