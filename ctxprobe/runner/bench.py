"""Measure one streamed prefill: tokens/s, model FLOP utilisation, peak memory, host<->device traffic.

MFU = model FLOPs (2 x active parameters per token + causal attention over the visible pairs,
ModelShape.flops) / wall time / the card's dense bf16 peak (989 TFLOP/s for an H100 SXM), known
for the cards in ctxprobe/hardware.py or given; on a CPU or an unlisted card there is no MFU.
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass

import torch

from ctxprobe.hardware import bf16_peak_tflops
from ctxprobe.runner.memory import ModelShape, Plan, Settings
from ctxprobe.runner.loop import prefill
from ctxprobe.units import fmt_bytes


@dataclass
class BenchResult:
    length: int
    seconds: float
    tokens_per_s: float
    tflops: float                # achieved model TFLOP/s
    mfu: float | None            # tflops / peak; None without a known peak (a CPU, an unlisted card)
    peak_tflops: float | None    # the peak MFU is against
    peak_gpu_bytes: int | None   # torch's peak allocated on the device (None on CPU)
    peak_host_bytes: int         # the process's peak resident set so far
    bytes_moved: int             # host/disk <-> device traffic: hidden states, KV, weights
    chunk_tokens: int
    device: str

    def line(self) -> str:
        gpu = "-" if self.peak_gpu_bytes is None else fmt_bytes(self.peak_gpu_bytes)
        mfu = "MFU     -" if self.mfu is None else f"MFU {100 * self.mfu:5.1f}%"
        return (f"{self.length:>10,} tokens  {self.seconds:8.2f} s  {self.tokens_per_s:12,.0f} tok/s  "
                f"{self.tflops:9.3f} TFLOP/s  {mfu}  peak GPU {gpu}  "
                f"peak host {fmt_bytes(self.peak_host_bytes)}  moved {fmt_bytes(self.bytes_moved)}")

    def to_json(self) -> dict:
        return asdict(self)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_prefill(model, length: int, *, settings: Settings | Plan | None = None,
                  peak_tflops: float | None = None, seed: int = 0, warmup: int = 512) -> BenchResult:
    """Prefill `length` random tokens once (logits of the last position only) and time it, after an
    untimed `warmup`-token prefill (kernel selection, lazy initialisation). peak_tflops: the
    device's dense bf16 peak for MFU; None: the card's own from ctxprobe/hardware.py, and no MFU
    on a CPU or a card not listed there."""
    if isinstance(settings, Plan):
        settings = settings.settings()
    settings = settings or Settings()
    device = torch.device(model.device)
    shape = ModelShape.from_config(model.config, torch.finfo(model.dtype).bits // 8)
    ids = torch.randint(0, model.config.vocab_size, (length,), generator=torch.Generator().manual_seed(seed))
    if warmup:
        prefill(model, ids[:min(warmup, length)], settings=settings)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    done = prefill(model, ids, settings=settings)
    _sync(device)
    seconds = time.perf_counter() - t0
    tflops = shape.flops(length) / seconds / 1e12
    if peak_tflops is None and device.type == "cuda":
        peak_tflops = bf16_peak_tflops(torch.cuda.get_device_name(device))
    return BenchResult(length=length, seconds=seconds, tokens_per_s=length / seconds, tflops=tflops,
                       mfu=None if peak_tflops is None else tflops / peak_tflops, peak_tflops=peak_tflops,
                       peak_gpu_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
                       peak_host_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                       bytes_moved=done.bytes_moved, chunk_tokens=settings.chunk_tokens, device=str(device))
