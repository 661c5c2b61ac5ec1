"""What a run asks of its backend, as data: NativeOptions for a local checkpoint (the native
runner), ServerOptions for an OpenAI-compatible server. The defaults are `ctxprobe run`'s.

Torch-free: an HTTP run imports this module and must never import torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ctxprobe.units import parse_bytes


@dataclass(frozen=True)
class MemoryBudgets:
    """--gpu-memory, --host-memory, --offload-dir; the plans they bound: ctxprobe/runner/memory.py."""
    gpu_memory: str | int | None = None    # e.g. "78GiB"; None = what is free on the device
    host_memory: str | int | None = None   # None = what is available on this machine
    offload_dir: str | None = None         # the disk tier; None = a run that needs disk is refused

    def given(self) -> dict:
        """Provenance for the run row (budgets are not identity: a rerun with others resumes)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def parsed(self) -> tuple[int | None, int | None]:
        """(GPU bytes, host bytes), None where not given; UserError naming a size it cannot read."""
        return (None if self.gpu_memory is None else parse_bytes(self.gpu_memory, "--gpu-memory"),
                None if self.host_memory is None else parse_bytes(self.host_memory, "--host-memory"))


@dataclass(frozen=True)
class NativeOptions:
    device: str | None = None             # None: cuda when available, else cpu
    dtype: str | None = None              # None: the checkpoint's
    chat_template: bool = True            # wrap probes in the checkpoint's template, if it has one
    gpu_memory: str | int | None = None   # budgets, e.g. "78GiB"; None: what is free when the run starts
    host_memory: str | int | None = None
    offload_dir: str | None = None        # the disk tier; None: a run that needs it is refused
    threads: int | None = None            # torch's CPU threads per pass; None: the free cores
    # For a teacher-forced cell that fails, also generate greedily up to this many tokens (what
    # the model really writes, decoded on from the scored pass's K/V); 0: off.
    generate_failing: int = 32
    # MoE models: record each cell's routing by prompt position (ctxprobe/router_trace.py).
    router_trace: bool = False

    def memory(self) -> MemoryBudgets:
        """The budgets, as the native backend's planner takes them (provenance, not identity)."""
        return MemoryBudgets(self.gpu_memory, self.host_memory, self.offload_dir)

    def budgets_given(self) -> bool:
        return any(v is not None for v in (self.gpu_memory, self.host_memory, self.offload_dir))


@dataclass(frozen=True)
class ServerOptions:
    served_model: str | None = None   # None: the one model the server lists
    api: str = "chat"                 # "chat" | "completions"
    api_key_env: str | None = None    # the environment variable holding the key (never the key)
    tokenizer: str | None = None      # tokenizer.json or its directory, when the server has no /tokenize
    timeout: float = 120.0            # seconds a whole request may take before it is retried
    retries: int = 5                  # on 429, 5xx and timeouts
    concurrency: int = 4              # requests in flight at once
    max_response_bytes: int = 1 << 20
    stream: bool = False              # server-sent events: time to first token and decode rate
    reasoning_budget: int = 0         # tokens a thinking model may spend before its answer
