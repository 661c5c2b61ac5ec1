"""Where block weights live between layers, and how they reach the compute one layer ahead.

Tiers (ctxprobe.runner.load_model(weights=...), placed by place() below):
    resident  every parameter on the compute device; LayerWeights does nothing.
    host      block l's parameters are views into one page-locked host arena of exact size
              (HostArenas). Under CUDA, enter(l) waits for the copy of l's arena (one DMA, started
              on a side stream one layer earlier) and starts l+1's; leave(l) points the block back
              at its host views. On a CPU device the arenas are the weights: nothing moves.
    disk      blocks hold meta parameters (no storage). DiskWeights reads block l+1 from the
              checkpoint's safetensors files into a staging buffer on a worker thread while block
              l computes (file reads release the GIL); under CUDA the staging buffers are
              page-locked and the worker also starts the copy to the device. leave(l) puts block l
              back on meta, so between layers the blocks hold nothing.

Callers drive every tier the same way:
    weights = LayerWeights(model.blocks, device)
    try:
        for l, block in enumerate(model.blocks):
            weights.enter(l); ...compute block l...; weights.leave(l)
    finally:
        weights.restore()

A layer's bytes are laid out as its parameters in `named_parameters` order, each at an offset
aligned to ALIGN bytes, so that one contiguous copy moves a layer and views need no re-packing.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

from ctxprobe.errors import UserError
from ctxprobe.models.loader import StoredTensor, file_stamp
from ctxprobe.runner.pinned import page_locked, unregister

ALIGN = 256          # bytes; cudaMalloc's alignment, so device views suit every kernel
WEIGHT_TIERS = ("resident", "host", "disk")


def weight_tier(weights: str | None, device: torch.device) -> str:
    """The tier to load into (None: "resident"). On a CPU device "host" is "resident" (the host is
    the device)."""
    weights = weights or "resident"
    if weights not in WEIGHT_TIERS:
        raise UserError(f"weights={weights!r} is not a weight tier; use one of {', '.join(WEIGHT_TIERS)}")
    if weights == "host" and device.type != "cuda":
        return "resident"
    return weights


def place(model: nn.Module, tier: str, device: torch.device, dtype: torch.dtype,
          reads: list[list[StoredTensor]] | None = None, stamps: dict | None = None) -> nn.Module:
    """Give a model built on the meta device storage for weight tier `tier` (see weight_tier), to be
    filled afterwards through its parameters. Embedding, final norm and head: on `device`. Blocks:
    on `device` (resident), views into page-locked host arenas (host), or left on meta and read
    from `reads` (per block, its stored tensors; `stamps` as indexed) one layer ahead (disk)."""
    for module_name, module in model.named_modules():
        if tier != "resident" and module_name.startswith("blocks."):
            continue
        for name, p in module._parameters.items():
            if p is not None:
                module._parameters[name] = nn.Parameter(torch.empty(p.shape, dtype=dtype, device=device),
                                                        requires_grad=False)
    if tier == "host":    # filled by the caller through the parameters, which are views into the arenas
        model.blocks.weight_source = HostArenas(model.blocks, dtype, copy=False)
    elif tier == "disk":  # blocks come in one layer at a time
        model.blocks.weight_source = DiskWeights(model.blocks, reads, dtype, cuda=device.type == "cuda",
                                                 stamps=stamps)
    model.weight_tier = tier
    return model


@dataclass
class Slot:
    """One parameter of a block: where it sits in the layer's bytes."""
    name: str                       # as in block.named_parameters(), e.g. "ffn.experts.w1"
    module: nn.Module
    attr: str
    offset: int
    shape: tuple
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape)

    def view(self, buf_u8: torch.Tensor) -> torch.Tensor:
        return buf_u8[self.offset:self.offset + self.nbytes].view(self.dtype).view(self.shape)


def layout(block: nn.Module, dtype: torch.dtype | None = None) -> tuple[list[Slot], int]:
    """-> (slots, exact bytes of the layer) with every parameter in `dtype` (default: its own)."""
    slots, offset = [], 0
    for name, p in block.named_parameters():
        mod_name, _, attr = name.rpartition(".")
        slot = Slot(name, block.get_submodule(mod_name) if mod_name else block, attr, offset,
                    tuple(p.shape), dtype or p.dtype)
        slots.append(slot)
        offset += -(-slot.nbytes // ALIGN) * ALIGN
    return slots, offset


def layer_bytes(block: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Exact bytes one layer takes in a host arena or a staging buffer (what the planner counts)."""
    return layout(block, dtype)[1]


def _point(slots: list[Slot], buf_u8: torch.Tensor | None):
    """Make each slot's parameter a view into buf_u8 (None: a meta tensor, no storage)."""
    for s in slots:
        t = s.view(buf_u8) if buf_u8 is not None else torch.empty(s.shape, dtype=s.dtype, device="meta")
        s.module._parameters[s.attr] = nn.Parameter(t, requires_grad=False)


class HostArenas:
    """The host tier: per layer, one exact-size page-locked arena holding all its parameters.

    copy=True moves the blocks' current weights in (presets, or blocks pinned after the fact);
    copy=False leaves the arenas to be filled through the parameters (the loader copies shards in)."""
    tier = "host"

    def __init__(self, blocks, dtype: torch.dtype | None = None, copy: bool = True):
        self.slots, self.arenas, self._registered = [], [], []
        for block in blocks:
            self.add(block, dtype, copy)

    def add(self, block: nn.Module, dtype: torch.dtype | None = None, copy: bool = True):
        """The next layer: its parameters become views into a new arena (holding their values if copy)."""
        slots, nbytes = layout(block, dtype)
        arena, registered = page_locked((nbytes,), torch.uint8)
        if copy:
            for s in slots:
                s.view(arena).copy_(getattr(s.module, s.attr))
        _point(slots, arena)
        self.slots.append(slots)
        self.arenas.append(arena)
        self._registered.append(registered)

    @property
    def nbytes(self) -> int:
        return sum(a.numel() for a in self.arenas)

    def rest(self, layer: int):
        _point(self.slots[layer], self.arenas[layer])

    def close(self):
        for i, registered in enumerate(self._registered):
            if registered:
                self._registered[i] = False
                unregister(self.arenas[i])

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class DiskWeights:
    """The disk tier: block weights read from the checkpoint's files one layer ahead of the compute.

    reads[l] lists the stored tensors that make up block l (checked against the model already).
    stamps: {file: file_stamp(file)} when the reads were indexed; a file that no longer matches is
    refused rather than read at the old offsets (another model's weights, or garbage).
    Two staging buffers (2 x the largest layer, page-locked under CUDA) alternate between layers;
    this is all the host memory the tier holds."""
    tier = "disk"

    def __init__(self, blocks, reads: list[list[StoredTensor]], dtype: torch.dtype, cuda: bool,
                 stamps: dict[str, tuple] | None = None):
        layouts = [layout(b, dtype) for b in blocks]
        self.slots, self.sizes = [slots for slots, _ in layouts], [n for _, n in layouts]
        self.reads, self.dtype, self.cuda, self.stamps = reads, dtype, cuda, stamps
        for slots in self.slots:
            _point(slots, None)
        self._staging: list[torch.Tensor] | None = None
        self._registered = False
        self._copied = [None, None]       # per staging buffer: CUDA event of its last copy to the device
        self._next = 0                    # staging buffer the next fetch fills
        self._fds: dict[str, int] = {}
        self._scratch = torch.empty(0, dtype=torch.uint8)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def staging_bytes(self) -> int:
        return 2 * max(self.sizes, default=0)

    def rest(self, layer: int):
        _point(self.slots[layer], None)

    def submit(self, fn, *args) -> Future:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctxprobe-weights")
        return self._pool.submit(fn, *args)

    def staging(self) -> tuple[int, torch.Tensor]:
        """-> (index, buffer) of the staging buffer the next fetch may fill."""
        if self._staging is None:
            bufs = [page_locked((max(self.sizes, default=0),), torch.uint8) if self.cuda
                    else (torch.empty(max(self.sizes, default=0), dtype=torch.uint8), False) for _ in range(2)]
            self._staging = [b for b, _ in bufs]
            self._registered = [r for _, r in bufs]
        i = self._next
        self._next ^= 1
        return i, self._staging[i]

    def fill(self, layer: int, buf_u8: torch.Tensor) -> int:
        """Read block `layer` from disk into buf_u8 in its layout; -> bytes read. Thread-safe per buffer."""
        by_name = {s.name: s for s in self.slots[layer]}
        for file in {r.file for r in self.reads[layer]}:
            self._check_unchanged(file)
        total = 0
        for r in self.reads[layer]:
            dest = by_name[r.param].view(buf_u8)
            dest = dest if r.expert is None else dest[r.expert]
            if r.dtype == self.dtype:
                _pread(self._fd(r.file), dest.view(-1).view(torch.uint8), r.start, r.file)
            else:   # --dtype differs from the checkpoint's: read as stored, convert in one pass
                raw = self._scratch_for(r.nbytes)
                _pread(self._fd(r.file), raw, r.start, r.file)
                dest.copy_(raw.view(r.dtype).view(r.shape))
            total += r.nbytes
        return total

    def _scratch_for(self, nbytes: int) -> torch.Tensor:
        if self._scratch.numel() < nbytes:
            self._scratch = torch.empty(nbytes, dtype=torch.uint8)
        return self._scratch[:nbytes]

    def _check_unchanged(self, file: str):
        """The open file is still the one indexed at load (fstat: microseconds, once per file per layer)."""
        if self.stamps is not None and file_stamp(os.fstat(self._fd(file))) != self.stamps[file]:
            raise UserError(f"{file} changed since the model was loaded (replaced, rewritten or truncated); "
                            "rerun to load the checkpoint as it is now")

    def _fd(self, file: str) -> int:
        with self._lock:
            if file not in self._fds:
                self._fds[file] = os.open(file, os.O_RDONLY)
            return self._fds[file]

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._staging is not None:
            for buf, registered in zip(self._staging, self._registered):
                if registered:
                    unregister(buf)
            self._staging = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _pread(fd: int, out_u8: torch.Tensor, offset: int, file: str):
    """Fill the contiguous uint8 tensor out_u8 from fd at offset (looping: one read moves < 2 GiB)."""
    view = memoryview(out_u8.numpy()).cast("B")
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise OSError(f"{file}: unexpected end of file at byte {offset + done}; re-download the checkpoint")
        done += n


class LayerWeights:
    """Schedules one pass over the blocks: block l's weights on the device between enter(l) and
    leave(l), block l+1's fetched meanwhile. A no-op for resident weights."""

    def __init__(self, blocks, device):
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            # A bare "cuda" is the current device: compared with a parameter's cuda:0 it would
            # differ, and resident blocks would be taken for host ones and moved into arenas.
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.source = getattr(blocks, "weight_source", None)
        self.blocks = list(blocks)
        self.bytes_moved = 0        # host -> device
        self.bytes_read = 0         # disk -> host (disk tier)
        cuda = self.device.type == "cuda"
        if self.source is None and cuda and any(p.device != self.device for b in self.blocks
                                                for p in b.parameters()):
            # Blocks left in host memory without an arena (built by hand): pin them once, exactly.
            self.source = HostArenas(self.blocks)
            if isinstance(blocks, nn.Module):
                blocks.weight_source = self.source
        tier = getattr(self.source, "tier", None)
        self.active = tier == "disk" or (tier == "host" and cuda)
        self._stream = torch.cuda.Stream(self.device) if self.active and cuda else None
        self._pending: dict[int, Future] = {}
        self._entered: set[int] = set()

    # Each fetch resolves to (uint8 buffer with the layer's bytes on the compute device, CUDA event or None).
    def _fetch(self, layer: int):
        if layer >= len(self.blocks) or layer in self._pending:
            return
        if self.source.tier == "host":
            arena = self.source.arenas[layer]
            with torch.cuda.stream(self._stream):
                dev = arena.to(self.device, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self._stream)
            self.bytes_moved += arena.numel()
            done = Future()
            done.set_result((dev, event))
            self._pending[layer] = done
        else:
            index, buf = self.source.staging()
            self._pending[layer] = self.source.submit(self._read, layer, index, buf)

    def _read(self, layer: int, index: int, buf: torch.Tensor):
        """Worker thread: block `layer` from disk into staging buffer `index` (then, under CUDA, to the device)."""
        src = self.source
        nbytes = src.sizes[layer]
        if self.device.type != "cuda":
            self.bytes_read += src.fill(layer, buf)
            return buf[:nbytes], None
        if src._copied[index] is not None:
            src._copied[index].synchronize()      # the buffer's previous copy to the device is done
        self.bytes_read += src.fill(layer, buf)
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            dev = buf[:nbytes].to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
        src._copied[index] = event
        self.bytes_moved += nbytes
        return dev, event

    def enter(self, layer: int):
        if not self.active:
            return
        assert not self._entered, f"enter({layer}) while layer(s) {self._entered} have not left"
        self._fetch(layer)
        dev, event = self._pending.pop(layer).result()
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            dev.record_stream(current)     # the side stream allocated it; the compute stream uses it
        _point(self.source.slots[layer], dev)
        self._entered.add(layer)
        self._fetch(layer + 1)

    def leave(self, layer: int):
        if not self.active:
            return
        self.source.rest(layer)
        self._entered.discard(layer)

    def restore(self):
        """Every block back at rest (host views, or meta for the disk tier) and prefetches waited
        for and dropped: after an error too, so that the next pass starts clean."""
        if not self.active:
            return
        for fut in self._pending.values():
            try:
                fut.result()
            except Exception:
                pass
        self._pending.clear()
        for layer in range(len(self.blocks)):
            self.source.rest(layer)
        self._entered.clear()
