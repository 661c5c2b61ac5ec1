"""Watching MoE routers: what a router chose, at which prompt positions (`ctxprobe run --router-trace`).

An observer is anything with `see(layer, pos_T, scores_TE, idx_TK)`; `observe_routers(model,
observer)` hands it to every MoE layer for the length of a `with`. Shapes: T tokens, E experts,
K experts per token.

    pos_T      [T] int64   absolute positions of the tokens being routed
    scores_TE  [T, E]      the router's per-expert score, the one it ranks experts by, in [0, 1]
                           (softmax over all experts, or the sigmoid of the logit)
    idx_TK     [T, K]      the experts chosen for each token

How a MoE module takes part (so that any family can): it has an attribute `tap = None`, and its
routing calls `if self.tap is not None: self.tap.see(scores_TE, idx_TK)`. Its Block needs nothing:
Block.qkv and Block.finish pair the tokens with their positions (below). A family whose block
overrides qkv or finish calls `tap.remember(x_TD, pos_T)` / `tap.recall(x_TD)` as they do.

Why positions travel this way: the feed-forward half (Block.finish) is not given positions, and a
runner calls qkv and finish in its own order (the ring runner makes every chunk's q, k, v, then
attends, then finishes the chunks; riders and decoded tokens go between). Each call of finish gets
the same tensor, or a view of the same rows, as the qkv call for those tokens, so the tap files
each qkv call's positions under (data pointer, rows) and finish looks them up. Without an observer
nothing is filed and nothing is looked up.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Protocol

import torch


class RouterObserver(Protocol):
    def see(self, layer: int, pos_T: torch.Tensor, scores_TE: torch.Tensor, idx_TK: torch.Tensor) -> None:
        ...


def _key(x_TD: torch.Tensor) -> tuple[int, int]:
    return x_TD.data_ptr(), x_TD.shape[0]


class RouterTap:
    """Lives on one MoE module while an observer watches: pairs the tokens it routes with their positions."""

    def __init__(self, observer: RouterObserver, layer: int):
        self.observer, self.layer = observer, layer
        self._positions: dict[tuple[int, int], torch.Tensor] = {}   # qkv calls not finished yet
        self._current: torch.Tensor | None = None                   # positions of the tokens in finish

    def remember(self, x_TD: torch.Tensor, pos_T: torch.Tensor) -> None:
        """Block.qkv: these tokens sit at pos_T."""
        self._positions[_key(x_TD)] = pos_T

    def recall(self, x_TD: torch.Tensor) -> None:
        """Block.finish: the tokens about to be routed are the ones qkv saw as x_TD."""
        pos_T = self._positions.pop(_key(x_TD), None)
        if pos_T is None:
            raise RuntimeError(f"router trace, layer {self.layer}: finish() got {x_TD.shape[0]} tokens that no "
                               "qkv() call gave positions for; a runner must pass finish the rows it passed qkv")
        self._current = pos_T

    def see(self, scores_TE: torch.Tensor, idx_TK: torch.Tensor) -> None:
        """The MoE module's routing: report what it chose for the tokens of the current finish()."""
        if self._current is None:   # routed outside a block (a test calling the module alone)
            return
        self.observer.see(self.layer, self._current, scores_TE, idx_TK)
        self._current = None


def routed_layers(model) -> list[int]:
    """The layers whose feed-forward is a router over experts (an attribute `tap`)."""
    return [i for i, block in enumerate(model.blocks) if hasattr(getattr(block, "ffn", None), "tap")]


@contextmanager
def observe_routers(model, observer: RouterObserver):
    """Inside the `with`, every MoE layer of `model` reports its routing to `observer`."""
    layers = routed_layers(model)
    for i in layers:
        model.blocks[i].ffn.tap = RouterTap(observer, i)
    try:
        yield layers
    finally:
        for i in layers:
            model.blocks[i].ffn.tap = None
