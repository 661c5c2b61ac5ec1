"""The memory plan of a streamed run, decided before any work: chunk size and the tier of each buffer.

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
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field

from ctxprobe.errors import UserError
from ctxprobe.runner.prefill import Settings
from ctxprobe.units import fmt_bytes, parse_bytes, parse_tokens

CHUNKS = [1 << p for p in range(16, 7, -1)]    # 65536 .. 256 tokens per prefill step
MIN_DEVICE_KV_CHUNK = 8192                     # below this, streaming KV beats starving the matmuls


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

    @property
    def kv_bytes_per_token(self) -> int:          # one layer, K and V
        return 2 * self.n_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def weight_bytes(self) -> int:
        return sum(lay.weight_bytes for lay in self.layers) + self.embed_bytes + self.head_bytes

    @property
    def shard_bytes_per_token(self) -> int:
        """Device bytes per token of a torchrun rank's share that the sharded runner holds through a
        whole layer: hidden states in and out, queries and attention output in the model's dtype,
        and the ring's fp32 accumulators (output and log-sum-exp)."""
        return (self.dtype_bytes * (2 * self.dim + 2 * self.n_heads * self.head_dim)
                + 4 * self.n_heads * (self.head_dim + 1))

    def live_kv_tokens(self, layer: LayerShape, length: int, chunk: int, block: int) -> int:
        """Keys a layer holds at once: all of them for global layers, a chunk/window plus slack otherwise."""
        if layer.kind == "global":
            return length
        return min(length, layer.span + chunk + 2 * block)

    def activation_bytes(self, chunk: int) -> int:
        """Device scratch for one chunk: hidden in/out, q/k/v, feed-forward, fp32 attention accumulators."""
        per_token = self.dtype_bytes * (6 * self.dim + 2 * (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
                                        + 3 * self.ffn_width) + 4 * 3 * self.n_heads * (self.head_dim + 1)
        return chunk * per_token

    @classmethod
    def from_config(cls, cfg, dtype_bytes: int | None = None) -> "ModelShape":
        """From ctxprobe.models' ModelConfig (duck-typed: dims, per-layer flags, experts)."""
        if dtype_bytes is None:
            name = str(getattr(cfg, "dtype", "bfloat16")).replace("torch.", "")
            dtype_bytes = {"float32": 4, "float64": 8}.get(name, 2)
        D, Hq, Hkv, Dh = cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        attn = D * Hq * Dh * 2 + D * Hkv * Dh * 2
        layers = []
        llama4 = str(getattr(cfg, "arch", "")).startswith("Llama4")
        for i in range(cfg.n_layers):
            if cfg.moe_layers[i]:
                expert = 3 * D * cfg.moe_ffn_dim
                shared = expert if llama4 else 0
                total = attn + cfg.n_experts * expert + D * cfg.n_experts + shared
                active = attn + cfg.top_k * expert + D * cfg.n_experts + shared
            else:
                total = active = attn + 3 * D * cfg.ffn_dim
            if cfg.chunked_layers[i] and cfg.chunk_size:
                kind, span = "chunked", cfg.chunk_size
            elif cfg.layer_mask(i)["window"]:     # gpt-oss: only the layers its layer_types name
                kind, span = "window", cfg.layer_mask(i)["window"]
            else:
                kind, span = "global", None
            layers.append(LayerShape(kind, span, (total + 2 * D) * dtype_bytes, active))
        for lay, exact in zip(layers, _exact_layer_bytes(cfg, dtype_bytes) or []):
            lay.weight_bytes = exact     # what a host arena or staging buffer really takes
        ffn_width = max([cfg.ffn_dim] + [cfg.moe_ffn_dim * (2 if llama4 else 1)] * any(cfg.moe_layers))
        emb = cfg.vocab_size * D * dtype_bytes
        return cls(dim=D, vocab=cfg.vocab_size, n_heads=Hq, n_kv_heads=Hkv, head_dim=Dh, ffn_width=ffn_width,
                   dtype_bytes=dtype_bytes, layers=layers, embed_bytes=emb,
                   head_bytes=0 if getattr(cfg, "tie_embeddings", False) else emb)

    def flops(self, length: int) -> float:
        """Model FLOPs of a prefill of `length` tokens: 2 x active params per token plus causal attention
        (QK^T and PV: 4 * Hq * Dh per visible (query, key) pair), head excluded (it runs on one row)."""
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
            total += 4.0 * self.n_heads * self.head_dim * pairs
        return total


_EXACT: dict[tuple[str, int], list[int] | None] = {}   # (repr(cfg), dtype bytes) -> layer bytes


def _exact_layer_bytes(cfg, dtype_bytes: int) -> list[int] | None:
    """Bytes of each block as the host and disk tiers lay it out (counted on a meta-device model,
    which takes a second to build for Scout's 48 layers, hence the cache); None for a config no
    model can be built from (the formula above stands)."""
    import torch

    from ctxprobe.runner.weights import layer_bytes

    key = (repr(cfg), dtype_bytes)
    if key not in _EXACT:
        dtype = {2: torch.bfloat16, 4: torch.float32, 8: torch.float64}.get(dtype_bytes)
        try:
            from ctxprobe.models.loader import build_empty

            blocks = build_empty(cfg).blocks
        except (AttributeError, KeyError, TypeError):
            blocks = None
        _EXACT[key] = None if dtype is None or blocks is None else [layer_bytes(b, dtype) for b in blocks]
    return _EXACT[key]


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


def plan_run(shape: ModelShape, length: int, *, device: str = "cpu", gpu_memory=None, host_memory=None,
             offload_dir: str | None = None, keep_kv: bool = False, extra_tokens: int = 0,
             kv_block_tokens: int = 16384, weights: str | None = None, sharded: bool = False) -> Plan:
    """Choose chunk size and tiers for a prefill of `length` tokens (+ extra_tokens for branches or
    generation). gpu_memory / host_memory: budgets (bytes or '80GiB'); None = no limit (callers
    pass `default_budgets()` for what this machine has free). weights: None lets the plan choose
    the weight tier; "resident" / "host" / "disk" fixes it (a loaded model, a preset without files).
    sharded: the plan of one torchrun rank for its share of `length` tokens (ctxprobe/runner/sharded.py)."""
    length = parse_tokens(length)
    gpu_budget = None if gpu_memory is None else parse_bytes(gpu_memory, "--gpu-memory")
    host_budget = None if host_memory is None else parse_bytes(host_memory, "--host-memory")
    on_gpu = device.startswith("cuda")
    if not on_gpu and gpu_budget is not None and host_budget is None:
        host_budget = gpu_budget            # on CPU the device is host memory
    n = length + extra_tokens
    block = max(1, min(kv_block_tokens, 1 << max(0, (n - 1).bit_length())))
    kvt = shape.kv_bytes_per_token
    hidden = length * shape.dim * shape.dtype_bytes
    # The sharded runner keeps its share's hidden states, queries and attention output on the device
    # through each layer (not one chunk of them), and the ring holds a peer's K/V share while it
    # receives the next: none of it shrinks with the chunk.
    shard = length * (shape.shard_bytes_per_token + 2 * kvt) if sharded else 0

    # Weights: resident when they take at most 60% of the device budget, else streamed per layer from
    # host memory (GPU only); from the checkpoint's files when host memory cannot hold them either.
    device_budget = gpu_budget if on_gpu else host_budget
    choose = weights is None
    if choose:
        fits = device_budget is None or shape.weight_bytes <= 0.6 * device_budget
        weights = "resident" if fits or not on_gpu else "host"
        if not on_gpu and host_budget is not None and (
                shape.weight_bytes + shape.activation_bytes(CHUNKS[-1]) > host_budget):
            weights = "disk"
    else:   # checked as the loader checks it; on CPU "host" is "resident" (the host is the device)
        import torch

        from ctxprobe.runner.weights import weight_tier

        weights = weight_tier(weights, torch.device("cuda" if on_gpu else "cpu"))
    weights_gpu, weights_host = _weight_bytes(shape, weights, on_gpu)
    resident = weights == "resident"

    # Chunk and KV tiers: the largest chunk that fits with KV on the device; else KV off the device.
    chunks = [c for c in CHUNKS if c < 2 * n] or [CHUNKS[-1]]
    chunk, kv_tiers, kv_gpu = None, None, 0

    def device_kv(chunk_: int) -> tuple[list[str], int]:
        """Tiers when as much KV as fits stays on the device; -> (tiers, device KV bytes)."""
        live_ = [shape.live_kv_tokens(lay, n, chunk_, block) * kvt for lay in shape.layers]
        if not on_gpu:
            return ["device"] * len(live_), (sum(live_) if keep_kv else max(live_))
        room = (device_budget or 0) - weights_gpu - shape.activation_bytes(chunk_) - 2 * block * kvt - shard
        tiers, used = [], 0
        for b in live_:
            fits = (used + b if keep_kv else b) <= room or device_budget is None
            tiers.append("device" if fits else "host")
            used = used + b if (keep_kv and fits) else (max(used, b) if fits else used)
        return tiers, used + (0 if all(t == "device" for t in tiers) else 2 * block * kvt)

    def pick_chunk():
        """-> (chunk, KV tiers, device KV bytes) for the current weights, or (None, None, 0)."""
        best = (None, None, 0)
        for c in chunks:   # largest first
            tiers, used = device_kv(c)
            if on_gpu:
                fits = device_budget is None or weights_gpu + shape.activation_bytes(c) + used + shard <= device_budget
            else:
                fits = host_budget is None or weights_gpu + shape.activation_bytes(c) + shard <= host_budget
            if not fits:
                continue
            all_device = all(t == "device" for t in tiers)
            if best[0] is None or (all_device and c >= min(MIN_DEVICE_KV_CHUNK, chunks[0])):
                best = (c, tiers, used)
            if all_device or c <= MIN_DEVICE_KV_CHUNK:
                break
        return best

    chunk, kv_tiers, kv_gpu = pick_chunk()
    if chunk is None:
        c = chunks[-1]
        if not on_gpu:
            raise _short("host memory", weights_gpu + shape.activation_bytes(c) + shard, host_budget,
                         f"the weights and even {c}-token chunks do not fit; raise --host-memory")
        need = weights_gpu + shape.activation_bytes(c) + 2 * block * kvt + shard
        raise _short("GPU memory", need, device_budget,
                     f"even {c}-token chunks with KV streamed from host do not fit; raise --gpu-memory"
                     + ("" if resident else " (weights are already streamed one layer at a time)"))
    if on_gpu:
        gpu_bytes = weights_gpu + shape.activation_bytes(chunk) + kv_gpu + shard
    else:
        gpu_bytes = 0

    # Host: hidden states, KV not on the device, streamed weights; spill to disk: weights, hidden, KV.
    live = [shape.live_kv_tokens(lay, n, chunk, block) * kvt for lay in shape.layers]
    off = [b for b, t in zip(live, kv_tiers) if t != "device"]
    kv_host = (sum(off) if keep_kv else max(off, default=0))
    hidden_tier = "device" if sharded else "host"
    cpu_extra = 0 if on_gpu else weights_gpu + shape.activation_bytes(chunk) + kv_gpu

    def host_need():
        return ((hidden if hidden_tier == "host" else 0) + (kv_host if "disk" not in kv_tiers else 0)
                + weights_host + cpu_extra + (0 if on_gpu else shard))

    if host_budget is not None and host_need() > host_budget and choose and weights != "disk":
        # Weights first: reading a layer from disk once per pass costs its size, while hidden states
        # on disk cost 2 x T x D per layer; and the checkpoint is on disk already.
        before = host_need()
        old = weights, weights_gpu, weights_host, cpu_extra
        old_chunk = chunk, kv_tiers, kv_gpu
        weights_gpu, weights_host = _weight_bytes(shape, "disk", on_gpu)
        weights, cpu_extra = "disk", (0 if on_gpu else weights_gpu + shape.activation_bytes(chunk) + kv_gpu)
        if host_need() >= before:    # a model of one or two layers: streaming saves nothing
            weights, weights_gpu, weights_host, cpu_extra = old
        elif not on_gpu:             # CPU: the room the weights left may take a larger chunk
            chunk, kv_tiers, kv_gpu = pick_chunk()
            live = [shape.live_kv_tokens(lay, n, chunk, block) * kvt for lay in shape.layers]
            cpu_extra = weights_gpu + shape.activation_bytes(chunk) + kv_gpu
            if host_need() > host_budget:   # the larger chunk went too far: keep the smaller one
                chunk, kv_tiers, kv_gpu = old_chunk
                live = [shape.live_kv_tokens(lay, n, chunk, block) * kvt for lay in shape.layers]
                cpu_extra = weights_gpu + shape.activation_bytes(chunk) + kv_gpu
    if host_budget is not None and host_need() > host_budget:
        if offload_dir is None:
            raise _short("host memory", host_need(), host_budget,
                         "pass --offload-dir DIR to put hidden states and KV on disk, or raise --host-memory")
        hidden_tier = "disk" if hidden_tier == "host" else hidden_tier
        if host_need() > host_budget:
            kv_tiers = ["disk" if t != "device" else t for t in kv_tiers]
            if not on_gpu:   # CPU: the "device" KV is host memory too
                kv_tiers = ["disk"] * len(kv_tiers)
                cpu_extra = weights_gpu + shape.activation_bytes(chunk)
        if host_need() > host_budget:
            raise _short("host memory", host_need(), host_budget,
                         "even with hidden states and KV on disk; raise --host-memory or use a smaller model")
    disk = (hidden if hidden_tier == "disk" else 0) + (
        (sum(b for b, t in zip(live, kv_tiers) if t == "disk") if keep_kv
         else max([b for b, t in zip(live, kv_tiers) if t == "disk"], default=0)))
    if disk and offload_dir is not None:
        _check_writable(offload_dir)
        free = shutil.disk_usage(offload_dir).free
        if disk > free:
            raise _short(f"disk space in {offload_dir}", disk, free, "free space there or pick another --offload-dir")
    return Plan(length=length, device=device, chunk_tokens=chunk, kv_block_tokens=block,
                weights=weights, kv_tiers=kv_tiers, hidden_tier=hidden_tier,
                offload_dir=offload_dir, keep_kv=keep_kv, gpu_bytes=gpu_bytes, host_bytes=host_need(),
                disk_bytes=disk, gpu_budget=gpu_budget if on_gpu else None, host_budget=host_budget, shape=shape,
                weights_host_bytes=weights_host if on_gpu else weights_gpu, shard_bytes=shard)


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


def plan_for_checkpoint(path, length, *, dtype=None, device=None, gpu_memory=None, host_memory=None,
                        offload_dir=None, keep_kv: bool = False, extra_tokens: int = 0, weights=None,
                        sharded: bool = False) -> Plan:
    """The plan for a checkpoint directory (config.json only; no weights are read).
    device: None = cuda when a GPU budget is given or a GPU is present, else cpu."""
    import torch

    from ctxprobe.models.loader import parse_dtype, read_config

    cfg = read_config(path)
    if device is None:
        device = "cuda" if gpu_memory is not None or torch.cuda.is_available() else "cpu"
    dt = parse_dtype(dtype or cfg.dtype)
    shape = ModelShape.from_config(cfg, dt.itemsize)
    if device.startswith("cuda") and gpu_memory is None and not torch.cuda.is_available():
        raise UserError("planning for a GPU on a machine without one: pass --gpu-memory (e.g. 80GiB)")
    return plan_run(shape, length, device=device, gpu_memory=gpu_memory, host_memory=host_memory,
                    offload_dir=offload_dir, keep_kv=keep_kv, extra_tokens=extra_tokens, weights=weights,
                    sharded=sharded)


def auto_settings(model, length: int, *, keep_kv: bool = False, extra_tokens: int = 0) -> Settings:
    """The plan's settings for a loaded model under this machine's free memory (no offload dir:
    a run that needs disk raises UserError). Models without a ModelConfig get the defaults."""
    from ctxprobe.runner.prefill import model_device, model_dtype

    try:
        shape = ModelShape.from_config(model.config, model_dtype(model).itemsize)
    except AttributeError:   # a hand-built model (tests): no per-layer config to plan from
        return Settings()
    device = str(model_device(model))
    gpu, host = default_budgets(device)
    if gpu is not None:
        import torch

        # Free memory excludes what torch's caching allocator already holds (the model's weights, and
        # blocks cached by earlier runs), all of which this run can use.
        gpu += torch.cuda.memory_reserved(device)
    # The model is loaded: its weight tier is fixed (and counts in the budgets as such).
    return plan_run(shape, length, device=device, gpu_memory=gpu, host_memory=host, keep_kv=keep_kv,
                    extra_tokens=extra_tokens, weights=getattr(model, "weight_tier", "resident")).settings()
