"""Record a prompt's router trace while the runner prefills it (`ctxprobe run --router-trace`).

The recorder is the observer of ctxprobe/models/router_tap.py: every MoE layer reports each batch
of tokens it routes, and the recorder adds them into per-layer, per-bucket sums on the device
(no host synchronisation while the pass runs; one copy at the end). Only the prompt counts: a
token at or past `prompt_tokens` (a branch riding behind the context, a generated token) falls
into a spare bucket that is dropped, which also keeps the boolean mask off the device's queue.

Under torchrun every rank routes its own shard of the prompt; `trace()` adds the ranks' sums.
Shapes: T tokens, E experts, K experts per token, B buckets (+1 spare).
"""

from __future__ import annotations

import torch

from ctxprobe.router_trace import RouterTrace, n_buckets


def buckets_of(pos_T: torch.Tensor) -> torch.Tensor:
    """Bucket of each position (router_trace.bucket_of): the binary exponent, exact in float64."""
    return torch.frexp(pos_T.to(torch.float64)).exponent.to(torch.int64)


class PromptRecorder:
    def __init__(self):
        self.prompt_tokens = 0
        self._sums: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def start(self, prompt_tokens: int, layers=(), n_experts: int = 0, device="cpu") -> None:
        """Forget what was seen; record the prompt positions [0, prompt_tokens) from now on.
        layers, n_experts, device: the sums to have even if a layer sees no token (a rank whose
        shard of a short prompt is empty must still take part in adding the ranks' sums)."""
        self.prompt_tokens, self._sums = prompt_tokens, {}
        for layer in layers:
            self._zeros(layer, n_experts, device)

    def _zeros(self, layer: int, n_experts: int, device):
        B = n_buckets(self.prompt_tokens)
        self._sums[layer] = (torch.zeros((B + 1) * n_experts, dtype=torch.int64, device=device),   # load
                             torch.zeros(B + 1, dtype=torch.int64, device=device),                 # tokens
                             torch.zeros(B + 1, dtype=torch.float64, device=device))               # margin sum
        return self._sums[layer]

    def see(self, layer: int, pos_T: torch.Tensor, scores_TE: torch.Tensor, idx_TK: torch.Tensor) -> None:
        B, (T, E) = n_buckets(self.prompt_tokens), scores_TE.shape
        load, tokens, margin = self._sums.get(layer) or self._zeros(layer, E, scores_TE.device)
        assert load.numel() == (B + 1) * E, "the recorder was started with another expert count"
        pos_T = pos_T.to(scores_TE.device)
        b_T = torch.where(pos_T < self.prompt_tokens, buckets_of(pos_T), B)
        load.index_add_(0, (b_T[:, None] * E + idx_TK).reshape(-1), torch.ones_like(idx_TK).reshape(-1))
        tokens.index_add_(0, b_T, torch.ones_like(b_T))
        if E > 1:
            top2 = torch.topk(scores_TE.float(), 2, dim=-1).values
            margin.index_add_(0, b_T, (top2[:, 0] - top2[:, 1]).to(torch.float64))
        else:   # one expert: the router has no choice to be sure of
            margin.index_add_(0, b_T, torch.ones(T, dtype=torch.float64, device=b_T.device))

    def trace(self, world=None) -> RouterTrace | None:
        """What was recorded since `start`; None when no MoE layer reported. world: the ranks
        (runner.distributed.World) that each routed a shard of the prompt, whose sums add up."""
        if not self._sums:
            return None
        B = n_buckets(self.prompt_tokens)
        layers = sorted(self._sums)
        load, tokens, margin = (torch.stack([self._sums[l][i] for l in layers]) for i in range(3))
        if world is not None and world.size > 1:
            import torch.distributed as dist

            for t in (load, tokens, margin):
                dist.all_reduce(t, group=world.group)
        load = load.view(len(layers), B + 1, -1)[:, :B].cpu().numpy()
        tokens, margin = tokens[:, :B].cpu().numpy(), margin[:, :B].cpu().numpy()
        mean = margin / tokens.clip(min=1)
        mean[tokens == 0] = float("nan")
        return RouterTrace(layers, load, tokens, mean)
