"""The one memory planner: chunk size and the tier of each buffer, decided before any work.

Inputs: the model's shape (from its config), the prompt length, and budgets for GPU memory, host
memory and a disk directory. Buffers:
    weights        resident on the device, or streamed one layer ahead from page-locked host
                   memory ("host", counted at its exact size) or from the checkpoint's own files
                   ("disk": only two layers' staging buffers in host memory, no offload dir)
    hidden states  T x D for the whole prompt, between layers: host, or disk when host is short
    KV             per layer: device, host (streamed back block by block) or disk; chunked-local
                   and sliding-window layers only hold a chunk or window of it
    activations    one chunk's worth on the device (the chunk size is what the plan tunes)
When host memory is short, block weights go to disk first (one pass reads each layer once; the
hidden states would cost two passes over T x D per layer), then the hidden states, then KV.
When the run cannot fit, `plan_run` raises UserError naming what is short and by how much.
On CPU the "device" is host memory, so everything shares the host budget and weights are
"resident" or "disk".

Here too: `Settings` (what a pass runs by: a plan's choice, or a test's), `RunPlanner` (the native
backend's plans for one checkpoint under fixed budgets, per torchrun rank) and `auto_settings`
(a loaded model under this machine's free memory).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from functools import lru_cache

import torch

from ctxprobe.errors import UserError
from ctxprobe.units import fmt_bytes

CHUNKS = [1 << p for p in range(16, 7, -1)]    # 65536 .. 256 tokens per prefill step
MIN_DEVICE_KV_CHUNK = 8192                     # below this, streaming KV beats starving the matmuls


@dataclass
class Settings:
    """How to run: what the planner decides (or a test forces)."""
    chunk_tokens: int = 4096
    kv_block_tokens: int = 4096
    kv_tiers: list[str] | str = "device"     # one tier for every layer, or one per layer
    hidden_tier: str = "host"
    offload_dir: str | None = None

    def kv_tier(self, layer: int) -> str:
        return self.kv_tiers if isinstance(self.kv_tiers, str) else self.kv_tiers[layer]

    def check(self, n_layers: int) -> None:
        """Refuse bad tiers before any work (under torchrun: on every rank alike, settings are the
        same everywhere, rather than on one rank in the middle of a collective)."""
        from ctxprobe.attention import TIERS

        if not isinstance(self.kv_tiers, str) and len(self.kv_tiers) != n_layers:
            raise UserError(f"settings give KV tiers for {len(self.kv_tiers)} layers but the model has "
                            f"{n_layers}: plan for this model, or give one tier for every layer")
        for layer in range(n_layers):
            tier = self.kv_tier(layer)
            if tier not in TIERS:
                raise UserError(f"unknown KV tier {tier!r} for layer {layer}; choose one of {', '.join(TIERS)}")
            if tier == "disk" and self.offload_dir is None:
                raise UserError("the disk KV tier needs an offload directory: pass --offload-dir")


# ---- the model's shape ------------------------------------------------------------------------
@dataclass
class LayerShape:
    kind: str                  # "global" | "chunked" | "window"
    span: int | None           # chunk size or window, in tokens
    weight_bytes: int
    active_params: int         # parameters one token multiplies through (top-k experts only)


@dataclass
class ModelShape:
    dim: int
    vocab: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_width: int             # widest feed-forward activation per token
    dtype_bytes: int
    layers: list[LayerShape] = field(default_factory=list)
    embed_bytes: int = 0
    head_bytes: int = 0
    v_head_dim: int | None = None     # Dv of the values (None: head_dim, which is Dk)
    values_in_keys: bool = False      # V is K's first Dv columns (MLA): the KV tiers keep K alone

    def __post_init__(self):
        self.v_head_dim = self.v_head_dim or self.head_dim

    @property
    def kv_bytes_per_token(self) -> int:          # one layer, K and V: Hkv * (Dk + Dv) (K alone: values_in_keys)
        return self.n_kv_heads * (self.head_dim + (0 if self.values_in_keys else self.v_head_dim)) * self.dtype_bytes

    @property
    def weight_bytes(self) -> int:
        return sum(lay.weight_bytes for lay in self.layers) + self.embed_bytes + self.head_bytes

    @property
    def shard_bytes_per_token(self) -> int:
        """Device bytes per token of a torchrun rank's share that the ring strategy holds through a
        whole layer: hidden states in and out, queries and attention output in the model's dtype,
        and the ring's fp32 accumulators (output and log-sum-exp)."""
        return (self.dtype_bytes * (2 * self.dim + self.n_heads * (self.head_dim + self.v_head_dim))
                + 4 * self.n_heads * (self.v_head_dim + 1))

    def live_kv_tokens(self, layer: LayerShape, length: int, chunk: int, block: int) -> int:
        """Keys a layer holds at once: all of them for global layers, a chunk/window plus slack otherwise."""
        if layer.kind == "global":
            return length
        return min(length, layer.span + chunk + 2 * block)

    def activation_bytes(self, chunk: int) -> int:
        """Device scratch for one chunk: hidden in/out, q/k/v, feed-forward, fp32 attention accumulators."""
        qkv = (self.n_heads + self.n_kv_heads) * self.head_dim + self.n_kv_heads * self.v_head_dim
        per_token = (self.dtype_bytes * (6 * self.dim + 2 * qkv + 3 * self.ffn_width)
                     + 4 * 3 * self.n_heads * (self.v_head_dim + 1))
        return chunk * per_token

    @classmethod
    def from_config(cls, cfg, dtype_bytes: int | None = None) -> "ModelShape":
        """From a ModelConfig: the shape facts of its model built on the meta device (models/shape.py)
        and each block's exact bytes as the host and disk tiers lay it out."""
        if dtype_bytes is None:
            name = str(getattr(cfg, "dtype", "bfloat16")).replace("torch.", "")
            dtype_bytes = {"float32": 4, "float64": 8}.get(name, 2)
        facts, layer_bytes = _facts(cfg, dtype_bytes)
        layers = [LayerShape(lay.kind, lay.span, size, lay.active_params)
                  for lay, size in zip(facts.layers, layer_bytes)]
        emb = facts.vocab * facts.dim * dtype_bytes
        # The config's dense width counts even where every layer is MoE (Scout): an upper bound.
        ffn_width = max(facts.ffn_width, cfg.ffn_dim)
        return cls(dim=facts.dim, vocab=facts.vocab, n_heads=facts.n_heads, n_kv_heads=facts.n_kv_heads,
                   head_dim=facts.k_head_dim, v_head_dim=facts.v_head_dim, values_in_keys=facts.values_in_keys,
                   ffn_width=ffn_width, dtype_bytes=dtype_bytes, layers=layers,
                   embed_bytes=emb, head_bytes=0 if cfg.tie_embeddings else emb)

    def flops(self, length: int) -> float:
        """Model FLOPs of a prefill of `length` tokens: 2 x active params per token plus causal attention
        (QK^T and PV: 2 * Hq * (Dk + Dv) per visible (query, key) pair), head excluded (it runs on one row)."""
        total = 0.0
        for lay in self.layers:
            total += 2.0 * lay.active_params * length
            if lay.kind == "global":
                pairs = length * (length + 1) / 2
            elif lay.kind == "chunked":
                full, rest = divmod(length, lay.span)
                pairs = full * lay.span * (lay.span + 1) / 2 + rest * (rest + 1) / 2
            else:
                W = min(lay.span, length)
                pairs = W * (W + 1) / 2 + (length - W) * W
            total += 2.0 * self.n_heads * (self.head_dim + self.v_head_dim) * pairs
        return total


_FACTS: dict[tuple[str, int], tuple] = {}   # (repr(cfg), dtype bytes) -> (ShapeFacts, bytes per block)
_DTYPES = {2: torch.bfloat16, 4: torch.float32, 8: torch.float64}


def _facts(cfg, dtype_bytes: int):
    """Counted on a meta-device model, which takes a second to build for Scout's 48 layers (hence the cache)."""
    key = (repr(cfg), dtype_bytes)
    if key not in _FACTS:
        from ctxprobe.models.loader import build_empty
        from ctxprobe.models.shape import shape_of
        from ctxprobe.runner.weights import layer_bytes

        model = build_empty(cfg)
        _FACTS[key] = shape_of(cfg, model), [layer_bytes(b, _DTYPES[dtype_bytes]) for b in model.blocks]
    return _FACTS[key]


# ---- the plan ---------------------------------------------------------------------------------
@dataclass
class Plan:
    length: int
    device: str
    chunk_tokens: int
    kv_block_tokens: int
    weights: str                    # "resident" | "host" | "disk" (ctxprobe.runner.load_model(weights=))
    kv_tiers: list[str]             # per layer
    hidden_tier: str                # "host" | "disk" | "device" (a torchrun rank's share)
    offload_dir: str | None
    keep_kv: bool
    gpu_bytes: int                  # peak estimates
    host_bytes: int
    disk_bytes: int
    gpu_budget: int | None
    host_budget: int | None
    shape: ModelShape
    weights_host_bytes: int = 0     # host memory the weights take: the arenas (host), staging (disk)
    shard_bytes: int = 0            # sharded: the share's tensors held on the device through a layer

    def settings(self) -> Settings:
        return Settings(chunk_tokens=self.chunk_tokens, kv_block_tokens=self.kv_block_tokens,
                        kv_tiers=list(self.kv_tiers), hidden_tier=self.hidden_tier, offload_dir=self.offload_dir)

    def describe(self) -> str:
        s = self.shape
        kinds = {}
        for lay, tier in zip(s.layers, self.kv_tiers):
            kinds.setdefault((lay.kind, lay.span, tier), 0)
            kinds[(lay.kind, lay.span, tier)] += 1
        kv_lines = []
        for (kind, span, tier), n in kinds.items():
            lay = next(x for x in s.layers if x.kind == kind and x.span == span)
            live = s.live_kv_tokens(lay, self.length, self.chunk_tokens, self.kv_block_tokens) * s.kv_bytes_per_token
            what = kind if span is None else f"{kind} ({span})"
            kv_lines.append(f"  KV, {n} {what} layer(s): {fmt_bytes(live)} each, {tier} tier")
        budget = lambda b: "no budget given" if b is None else f"budget {fmt_bytes(b)}"  # noqa: E731
        mode = "all layers' KV kept (generation)" if self.keep_kv else "one layer's KV at a time"
        lines = [f"plan for {self.length:,} tokens on {self.device}, {mode}:",
                 f"  chunk: {self.chunk_tokens:,} tokens per step, KV blocks of {self.kv_block_tokens:,} tokens",
                 f"  weights: {fmt_bytes(s.weight_bytes)}, " + self._where_weights(),
                 f"  hidden states: {fmt_bytes(self.length * s.dim * s.dtype_bytes)}, {self.hidden_tier} tier",
                 *kv_lines,
                 *([f"  peak GPU memory: {fmt_bytes(self.gpu_bytes)} ({budget(self.gpu_budget)})"]
                   if self.device.startswith("cuda") else []),
                 f"  peak host memory: {fmt_bytes(self.host_bytes)} ({budget(self.host_budget)})"]
        if self.shard_bytes:
            lines.insert(4, f"  rank's share on the device: {fmt_bytes(self.shard_bytes)} (hidden states, queries, "
                            "attention output, the ring's K/V in flight)")
        if self.disk_bytes:
            lines.append(f"  disk: {fmt_bytes(self.disk_bytes)} in {self.offload_dir}")
        return "\n".join(lines)

    def _where_weights(self) -> str:
        if self.weights == "resident":
            return f"resident on {self.device}"
        if self.weights == "host":
            return (f"host tier: blocks in page-locked host memory ({fmt_bytes(self.weights_host_bytes)}, "
                    "exact size), copied in one layer ahead of the compute")
        staging = "two layers' staging" + ("" if self.device.startswith("cuda") else ", embedding and head")
        return (f"disk tier: blocks read from the checkpoint's files one layer ahead of the compute "
                f"(host memory: {fmt_bytes(self.weights_host_bytes)} for {staging})")


def default_budgets(device: str):
    """(gpu free bytes or None, host available bytes or None) on this machine."""
    gpu = None
    if device.startswith("cuda"):
        import torch

        gpu = torch.cuda.mem_get_info(device)[0]
    host = None
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        host = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    return gpu, host


def _short(what: str, need: int, have: int, fix: str) -> UserError:
    return UserError(f"{what}: the run needs {fmt_bytes(need)} but the budget is {fmt_bytes(have)}, "
                     f"short by {fmt_bytes(need - have)}; {fix}")


@dataclass(frozen=True)
class _Ask:
    """What one plan must hold, fixed before any choice. n: prompt + extra tokens."""
    shape: ModelShape
    n: int
    block: int                 # K/V block tokens
    on_gpu: bool
    gpu_budget: int | None
    host_budget: int | None
    keep_kv: bool
    hidden: int                # bytes of the prompt's hidden states
    shard: int                 # a torchrun rank's share held on the device through a layer (0: one process)

    @property
    def device_budget(self) -> int | None:
        return self.gpu_budget if self.on_gpu else self.host_budget

    @property
    def kvt(self) -> int:
        return self.shape.kv_bytes_per_token

    def live_kv(self, chunk: int) -> list[int]:
        """Per layer, the KV bytes it holds at once."""
        return [self.shape.live_kv_tokens(lay, self.n, chunk, self.block) * self.kvt for lay in self.shape.layers]


@dataclass(frozen=True)
class _Fit:
    """One choice of tiers and chunk. kv_gpu: KV bytes on the device (on a CPU, in host memory)."""
    weights: str
    chunk: int
    kv_tiers: list[str]
    kv_gpu: int
    hidden_tier: str


def _choose_weights(ask: _Ask, weights: str | None) -> str:
    """Resident when they take at most 60% of the device budget, else streamed per layer from host
    memory (GPU only); from the checkpoint's files when host memory cannot hold them either.
    A tier given is checked as the loader checks it (on CPU "host" is "resident": the host is the device)."""
    if weights is not None:
        from ctxprobe.runner.weights import weight_tier

        return weight_tier(weights, torch.device("cuda" if ask.on_gpu else "cpu"))
    shape = ask.shape
    fits = ask.device_budget is None or shape.weight_bytes <= 0.6 * ask.device_budget
    weights = "resident" if fits or not ask.on_gpu else "host"
    if not ask.on_gpu and ask.host_budget is not None and (
            shape.weight_bytes + shape.activation_bytes(CHUNKS[-1]) > ask.host_budget):
        weights = "disk"
    return weights


def _device_kv(ask: _Ask, weights_gpu: int, chunk: int) -> tuple[list[str], int]:
    """Tiers when as much KV as fits stays on the device -> (tiers, device KV bytes)."""
    live = ask.live_kv(chunk)
    if not ask.on_gpu:
        return ["device"] * len(live), (sum(live) if ask.keep_kv else max(live))
    room = ((ask.device_budget or 0) - weights_gpu - ask.shape.activation_bytes(chunk) - 2 * ask.block * ask.kvt
            - ask.shard)
    tiers, used = [], 0
    for b in live:
        fits = (used + b if ask.keep_kv else b) <= room or ask.device_budget is None
        tiers.append("device" if fits else "host")
        used = used + b if (ask.keep_kv and fits) else (max(used, b) if fits else used)
    return tiers, used + (0 if all(t == "device" for t in tiers) else 2 * ask.block * ask.kvt)


def _pick_chunk(ask: _Ask, weights_gpu: int):
    """The largest chunk that fits with KV on the device, else KV off the device
    -> (chunk, KV tiers, device KV bytes), or (None, None, 0) when even the smallest does not fit."""
    chunks = [c for c in CHUNKS if c < 2 * ask.n] or [CHUNKS[-1]]
    act = ask.shape.activation_bytes
    best = (None, None, 0)
    for c in chunks:   # largest first
        tiers, used = _device_kv(ask, weights_gpu, c)
        if ask.on_gpu:
            fits = ask.device_budget is None or weights_gpu + act(c) + used + ask.shard <= ask.device_budget
        else:
            fits = ask.host_budget is None or weights_gpu + act(c) + ask.shard <= ask.host_budget
        if not fits:
            continue
        all_device = all(t == "device" for t in tiers)
        if best[0] is None or (all_device and c >= min(MIN_DEVICE_KV_CHUNK, chunks[0])):
            best = (c, tiers, used)
        if all_device or c <= MIN_DEVICE_KV_CHUNK:
            break
    return best


def _first_fit(ask: _Ask, weights: str, hidden_tier: str) -> _Fit:
    weights_gpu = _weight_bytes(ask.shape, weights, ask.on_gpu)[0]
    chunk, tiers, kv_gpu = _pick_chunk(ask, weights_gpu)
    if chunk is not None:
        return _Fit(weights, chunk, tiers, kv_gpu, hidden_tier)
    c, act = CHUNKS[-1], ask.shape.activation_bytes(CHUNKS[-1])
    if not ask.on_gpu:
        raise _short("host memory", weights_gpu + act + ask.shard, ask.host_budget,
                     f"the weights and even {c}-token chunks do not fit; raise --host-memory")
    raise _short("GPU memory", weights_gpu + act + 2 * ask.block * ask.kvt + ask.shard, ask.device_budget,
                 f"even {c}-token chunks with KV streamed from host do not fit; raise --gpu-memory"
                 + ("" if weights == "resident" else " (weights are already streamed one layer at a time)"))


def _host_need(ask: _Ask, fit: _Fit) -> int:
    """Host bytes: hidden states, KV not on the device, streamed weights (on a CPU, everything)."""
    weights_gpu, weights_host = _weight_bytes(ask.shape, fit.weights, ask.on_gpu)
    off = [b for b, t in zip(ask.live_kv(fit.chunk), fit.kv_tiers) if t != "device"]
    kv_host = 0 if "disk" in fit.kv_tiers else (sum(off) if ask.keep_kv else max(off, default=0))
    cpu_extra = 0 if ask.on_gpu else weights_gpu + ask.shape.activation_bytes(fit.chunk) + fit.kv_gpu + ask.shard
    return (ask.hidden if fit.hidden_tier == "host" else 0) + kv_host + weights_host + cpu_extra


def _weights_to_disk(ask: _Ask, fit: _Fit) -> _Fit:
    """Host memory is short: weights go first (reading a layer from disk once per pass costs its size,
    while hidden states on disk cost 2 x T x D per layer; and the checkpoint is on disk already)."""
    before = _host_need(ask, fit)
    on_disk = replace(fit, weights="disk")
    if _host_need(ask, on_disk) >= before:    # a model of one or two layers: streaming saves nothing
        return fit
    if ask.on_gpu:
        return on_disk
    # CPU: the room the weights left may take a larger chunk, unless that goes too far.
    chunk, tiers, kv_gpu = _pick_chunk(ask, _weight_bytes(ask.shape, "disk", False)[0])
    larger = replace(on_disk, chunk=chunk, kv_tiers=tiers, kv_gpu=kv_gpu)
    return larger if _host_need(ask, larger) <= ask.host_budget else on_disk


def _spill(ask: _Ask, fit: _Fit, offload_dir: str | None) -> _Fit:
    """Still short of host memory: hidden states to disk, then the KV that is not on the device."""
    if _host_need(ask, fit) <= ask.host_budget:
        return fit
    if offload_dir is None:
        raise _short("host memory", _host_need(ask, fit), ask.host_budget,
                     "pass --offload-dir DIR to put hidden states and KV on disk, or raise --host-memory")
    if fit.hidden_tier == "host":
        fit = replace(fit, hidden_tier="disk")
    if _host_need(ask, fit) > ask.host_budget:
        if ask.on_gpu:
            fit = replace(fit, kv_tiers=["disk" if t != "device" else t for t in fit.kv_tiers])
        else:   # the "device" KV is host memory too
            fit = replace(fit, kv_tiers=["disk"] * len(fit.kv_tiers), kv_gpu=0)
    if _host_need(ask, fit) > ask.host_budget:
        raise _short("host memory", _host_need(ask, fit), ask.host_budget,
                     "even with hidden states and KV on disk; raise --host-memory or use a smaller model")
    return fit


def _disk_bytes(ask: _Ask, fit: _Fit) -> int:
    on_disk = [b for b, t in zip(ask.live_kv(fit.chunk), fit.kv_tiers) if t == "disk"]
    return (ask.hidden if fit.hidden_tier == "disk" else 0) + (
        sum(on_disk) if ask.keep_kv else max(on_disk, default=0))


def plan_run(shape: ModelShape, length: int, *, device: str = "cpu", gpu_budget: int | None = None,
             host_budget: int | None = None, offload_dir: str | None = None, keep_kv: bool = False,
             extra_tokens: int = 0, kv_block_tokens: int = 16384, weights: str | None = None,
             sharded: bool = False) -> Plan:
    """Choose chunk size and tiers for a prefill of `length` tokens (+ extra_tokens for branches or
    generation). gpu_budget / host_budget: bytes (MemoryBudgets.parsed()); None = no limit (callers
    pass `default_budgets()` for what this machine has free). weights: None lets the plan choose
    the weight tier; "resident" / "host" / "disk" fixes it (a loaded model, a preset without files).
    sharded: the plan of one torchrun rank for its share of `length` tokens (the ring strategy)."""
    on_gpu = device.startswith("cuda")
    if not on_gpu and gpu_budget is not None and host_budget is None:
        host_budget = gpu_budget            # on CPU the device is host memory
    n = length + extra_tokens
    # A rank keeps its share's hidden states, queries and attention output on the device through
    # each layer (not one chunk of them), and the ring holds a peer's K/V share while it receives
    # the next: none of it shrinks with the chunk.
    ask = _Ask(shape, n, block=max(1, min(kv_block_tokens, 1 << max(0, (n - 1).bit_length()))), on_gpu=on_gpu,
               gpu_budget=gpu_budget, host_budget=host_budget, keep_kv=keep_kv,
               hidden=length * shape.dim * shape.dtype_bytes,
               shard=length * (shape.shard_bytes_per_token + 2 * shape.kv_bytes_per_token) if sharded else 0)
    fit = _first_fit(ask, _choose_weights(ask, weights), hidden_tier="device" if sharded else "host")
    # Counted for the weights first chosen (they may still go to disk below: then it is an upper bound).
    gpu_bytes = (_weight_bytes(shape, fit.weights, on_gpu)[0] + shape.activation_bytes(fit.chunk) + fit.kv_gpu
                 + ask.shard) if on_gpu else 0
    if host_budget is not None:
        if weights is None and fit.weights != "disk" and _host_need(ask, fit) > host_budget:
            fit = _weights_to_disk(ask, fit)
        fit = _spill(ask, fit, offload_dir)
    disk = _disk_bytes(ask, fit)
    if disk and offload_dir is not None:
        _check_writable(offload_dir)
        free = shutil.disk_usage(offload_dir).free
        if disk > free:
            raise _short(f"disk space in {offload_dir}", disk, free, "free space there or pick another --offload-dir")
    weights_gpu, weights_host = _weight_bytes(shape, fit.weights, on_gpu)
    return Plan(length=length, device=device, chunk_tokens=fit.chunk, kv_block_tokens=ask.block,
                weights=fit.weights, kv_tiers=fit.kv_tiers, hidden_tier=fit.hidden_tier,
                offload_dir=offload_dir, keep_kv=keep_kv, gpu_bytes=gpu_bytes, host_bytes=_host_need(ask, fit),
                disk_bytes=disk, gpu_budget=gpu_budget if on_gpu else None, host_budget=host_budget, shape=shape,
                weights_host_bytes=weights_host if on_gpu else weights_gpu, shard_bytes=ask.shard)


def _check_writable(offload_dir: str) -> None:
    """The disk tier will create files here: refuse a path it cannot write to now, before any cell."""
    try:
        os.makedirs(offload_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=offload_dir):
            pass
    except OSError as e:
        raise UserError(f"--offload-dir {offload_dir}: cannot write there ({e.strerror or e}); "
                        "pick a writable directory") from None


def _weight_bytes(shape: ModelShape, tier: str, on_gpu: bool) -> tuple[int, int]:
    """-> (bytes on the compute device, host bytes besides) the weights take in `tier`. Streamed
    tiers keep two layers on the device (one computing, the next arriving); the host tier holds
    every block in its arena, the disk tier two staging buffers of the largest layer."""
    if tier == "resident":
        return shape.weight_bytes, 0
    blocks = sum(lay.weight_bytes for lay in shape.layers)
    two_layers = 2 * max(lay.weight_bytes for lay in shape.layers)
    device = two_layers + shape.embed_bytes + shape.head_bytes
    if not on_gpu:   # the device is the host: the staging buffers are the two layers
        return device, 0
    return device, blocks if tier == "host" else two_layers


def plan_for_checkpoint(path, length: int, *, dtype=None, device=None, gpu_budget: int | None = None,
                        host_budget: int | None = None, offload_dir=None, keep_kv: bool = False,
                        extra_tokens: int = 0, weights=None, sharded: bool = False) -> Plan:
    """The plan for a checkpoint directory (config.json only; no weights are read).
    device: None = cuda when a GPU budget is given or a GPU is present, else cpu."""
    from ctxprobe.models.loader import parse_dtype, read_config

    cfg = read_config(path)
    if device is None:
        device = "cuda" if gpu_budget is not None or torch.cuda.is_available() else "cpu"
    shape = ModelShape.from_config(cfg, parse_dtype(dtype or cfg.dtype).itemsize)
    if device.startswith("cuda") and gpu_budget is None and not torch.cuda.is_available():
        raise UserError("planning for a GPU on a machine without one: pass --gpu-memory (e.g. 80GiB)")
    return plan_run(shape, length, device=device, gpu_budget=gpu_budget, host_budget=host_budget,
                    offload_dir=offload_dir, keep_kv=keep_kv, extra_tokens=extra_tokens, weights=weights,
                    sharded=sharded)


def auto_settings(model, length: int, *, keep_kv: bool = False, extra_tokens: int = 0) -> Settings:
    """The plan's settings for a loaded model under this machine's free memory (no offload dir:
    a run that needs disk raises UserError). Models without a ModelConfig get the defaults."""
    try:
        shape = ModelShape.from_config(model.config, model.dtype.itemsize)
    except AttributeError:   # a hand-built model (tests): no per-layer config to plan from
        return Settings()
    device = str(model.device)
    gpu, host = default_budgets(device)
    if gpu is not None:
        # Free memory excludes what torch's caching allocator already holds (the model's weights, and
        # blocks cached by earlier runs), all of which this run can use.
        gpu += torch.cuda.memory_reserved(device)
    # The model is loaded: its weight tier is fixed (and counts in the budgets as such).
    return plan_run(shape, length, device=device, gpu_budget=gpu, host_budget=host, keep_kv=keep_kv,
                    extra_tokens=extra_tokens, weights=getattr(model, "weight_tier", "resident")).settings()


# ---- the native backend's plans ---------------------------------------------------------------
class RunPlanner:
    """Plans for one checkpoint on one device under fixed budgets (a backends.options.MemoryBudgets).

    The native backend makes one plan for the sweep's longest cell before it loads any weight: that
    plan says where the weights live, and a sweep whose longest cell cannot fit is refused before it
    starts, naming what is short. Every pass then runs by the plan for its own prompt length under
    the same budgets and weight tier: planning is arithmetic over the layers (well under a
    millisecond), and a short cell keeps its KV on the device even where the longest cell must
    stream it. The budgets are fixed when the backend opens, before the weights take their share of
    free memory, because every plan counts the weights itself.

    Under torchrun each rank holds about 1/ranks of the prompt's tokens (and their K/V), so a rank
    plans for the largest share any rank holds; `local_ranks` processes on one machine split its
    available host memory.
    """

    def __init__(self, path: str, *, device: str, dtype, budgets, ranks: int = 1, local_ranks: int = 1):
        from ctxprobe.models.loader import read_config

        cfg = read_config(path)
        self._chunk_sizes = [cfg.layer_mask(i)["chunk_size"] for i in range(cfg.n_layers)]   # how shards align
        self.path, self.device, self.dtype, self.ranks = path, device, dtype, ranks
        self.budgets = budgets
        self._given = budgets.parsed()
        free_gpu, free_host = default_budgets(device)
        self.gpu_budget = self._given[0] if self._given[0] is not None else free_gpu
        self.host_budget = self._given[1]
        on_cpu_with_gpu_budget = not device.startswith("cuda") and self._given[0] is not None
        if self.host_budget is None and free_host is not None and not on_cpu_with_gpu_budget:
            self.host_budget = free_host // max(1, local_ranks)
        # (on a CPU the device is host memory: plan_run reads a lone GPU budget as the host budget)
        self._shape = self.weights = None      # set by plan_sweep
        self._plan = lru_cache(maxsize=256)(self._plan_uncached)

    def agree(self, world) -> None:
        """Under torchrun (every rank calls it): budgets left to this machine's free memory become
        the smallest any rank measured, so every rank makes the same plans. Budgets given as flags
        are the same everywhere already."""
        import torch.distributed as dist

        every = [None] * world.size
        dist.all_gather_object(every, (self.gpu_budget, self.host_budget), group=world.control)
        if self._given[0] is None:
            self.gpu_budget = min((g for g, _ in every if g is not None), default=None)
        if self._given[1] is None:
            self.host_budget = min((h for _, h in every if h is not None), default=None)
        self._plan.cache_clear()

    def plan_sweep(self, length: int, *, extra_tokens: int = 0, keep_kv: bool = False) -> Plan:
        """The plan for the sweep's longest pass, from the checkpoint's config alone (no weight is
        read): it picks the weight tier. UserError naming what is short when it cannot fit."""
        plan = plan_for_checkpoint(self.path, self._share(length), dtype=self.dtype, device=self.device,
                                   gpu_budget=self.gpu_budget, host_budget=self.host_budget,
                                   offload_dir=self.budgets.offload_dir, keep_kv=keep_kv,
                                   extra_tokens=extra_tokens, sharded=self.ranks > 1)
        self._shape, self.weights = plan.shape, plan.weights
        self._plan.cache_clear()
        return plan

    def plan(self, length: int, *, extra_tokens: int = 0, keep_kv: bool = False) -> Plan:
        """The plan for one pass, with the weights where `plan_sweep` put them."""
        assert self._shape is not None, "plan_sweep decides the weight tier before any pass"
        return self._plan(self._share(length), extra_tokens, keep_kv)

    def _share(self, length: int) -> int:
        """The most prompt tokens one rank holds: shards aligned to Llama 4's attention chunk are
        uneven (up to a chunk per zigzag piece more than length / ranks)."""
        if self.ranks == 1:
            return length
        from ctxprobe.attention.shard import chunk_align, shard_len

        align = chunk_align(self._chunk_sizes, length, self.ranks)
        return max(shard_len(length, rank, self.ranks, align=align) for rank in range(self.ranks))

    def _plan_uncached(self, length: int, extra_tokens: int, keep_kv: bool) -> Plan:
        return plan_run(self._shape, length, device=self.device, gpu_budget=self.gpu_budget,
                        host_budget=self.host_budget, offload_dir=self.budgets.offload_dir,
                        keep_kv=keep_kv, extra_tokens=extra_tokens, weights=self.weights,
                        sharded=self.ranks > 1)


def local_ranks() -> int:
    """Processes torchrun started on this machine (they share its host memory)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1
