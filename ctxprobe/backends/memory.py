"""What a native run may use (--gpu-memory, --host-memory, --offload-dir) and the plans it runs by.

The native backend makes one plan for the sweep's longest cell before it loads any weight: that
plan says where the weights live, and a sweep whose longest cell cannot fit is refused before it
starts, naming what is short. Every pass then runs by the plan for its own prompt length under the
same budgets and weight tier: planning is arithmetic over the layers (well under a millisecond),
and a short cell keeps its KV on the device even where the longest cell must stream it.

The budgets are fixed when the backend opens, before the weights take their share of free
memory, because every plan counts the weights itself.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from functools import lru_cache


@dataclass(frozen=True)
class MemoryBudgets:
    gpu_memory: str | int | None = None    # e.g. "78GiB"; None = what is free on the device
    host_memory: str | int | None = None   # None = what is available on this machine
    offload_dir: str | None = None         # the disk tier; None = a run that needs disk is refused

    def given(self) -> dict:
        """Provenance for the run row (budgets are not identity: a rerun with others resumes)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


class RunPlanner:
    """Plans for one checkpoint on one device under fixed budgets.

    Under torchrun each rank holds about 1/ranks of the prompt's tokens (and their K/V), so a rank
    plans for the largest share any rank holds; `local_ranks` processes on one machine split its
    available host memory.
    """

    def __init__(self, path: str, *, device: str, dtype, budgets: MemoryBudgets, ranks: int = 1,
                 local_ranks: int = 1):
        from ctxprobe.models.loader import read_config
        from ctxprobe.runner.planner import default_budgets

        cfg = read_config(path)
        self._masks = [cfg.layer_mask(i) for i in range(cfg.n_layers)]    # how the ranks' shards align
        self.path, self.device, self.dtype, self.ranks = path, device, dtype, ranks
        self.budgets = budgets
        free_gpu, free_host = default_budgets(device)
        self.gpu_memory = budgets.gpu_memory if budgets.gpu_memory is not None else free_gpu
        self.host_memory = budgets.host_memory
        on_cpu_with_gpu_budget = not device.startswith("cuda") and budgets.gpu_memory is not None
        if self.host_memory is None and free_host is not None and not on_cpu_with_gpu_budget:
            self.host_memory = free_host // max(1, local_ranks)
        # (on a CPU the device is host memory: plan_run reads a lone --gpu-memory as the host budget)
        self._shape = self.weights = None      # set by plan_sweep
        self._plan = lru_cache(maxsize=256)(self._plan_uncached)

    def agree(self, world) -> None:
        """Under torchrun (every rank calls it): budgets left to this machine's free memory become
        the smallest any rank measured, so every rank makes the same plans. Budgets given as flags
        are the same everywhere already."""
        import torch.distributed as dist

        every = [None] * world.size
        dist.all_gather_object(every, (self.gpu_memory, self.host_memory), group=world.control)
        if self.budgets.gpu_memory is None:
            self.gpu_memory = min((g for g, _ in every if g is not None), default=None)
        if self.budgets.host_memory is None:
            self.host_memory = min((h for _, h in every if h is not None), default=None)
        self._plan.cache_clear()

    def plan_sweep(self, length: int, *, extra_tokens: int = 0, keep_kv: bool = False):
        """The plan for the sweep's longest pass, from the checkpoint's config alone (no weight is
        read): it picks the weight tier. UserError naming what is short when it cannot fit."""
        from ctxprobe.runner.planner import plan_for_checkpoint

        plan = plan_for_checkpoint(self.path, self._share(length), dtype=self.dtype, device=self.device,
                                   gpu_memory=self.gpu_memory, host_memory=self.host_memory,
                                   offload_dir=self.budgets.offload_dir, keep_kv=keep_kv,
                                   extra_tokens=extra_tokens, sharded=self.ranks > 1)
        self._shape, self.weights = plan.shape, plan.weights
        self._plan.cache_clear()
        return plan

    def plan(self, length: int, *, extra_tokens: int = 0, keep_kv: bool = False):
        """The plan for one pass, with the weights where `plan_sweep` put them."""
        assert self._shape is not None, "plan_sweep decides the weight tier before any pass"
        return self._plan(self._share(length), extra_tokens, keep_kv)

    def _share(self, length: int) -> int:
        """The most prompt tokens one rank holds: shards aligned to Llama 4's attention chunk are
        uneven (up to a chunk per zigzag piece more than length / ranks)."""
        if self.ranks == 1:
            return length
        from ctxprobe.attention.shard import shard_len
        from ctxprobe.runner.sharded import chunk_align

        align = chunk_align(self._masks, length, self.ranks)
        return max(shard_len(length, rank, self.ranks, align=align) for rank in range(self.ranks))

    def _plan_uncached(self, length: int, extra_tokens: int, keep_kv: bool):
        from ctxprobe.runner.planner import plan_run

        return plan_run(self._shape, length, device=self.device, gpu_memory=self.gpu_memory,
                        host_memory=self.host_memory, offload_dir=self.budgets.offload_dir,
                        keep_kv=keep_kv, extra_tokens=extra_tokens, weights=self.weights,
                        sharded=self.ranks > 1)


def local_ranks() -> int:
    """Processes torchrun started on this machine (they share its host memory)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1
