"""The online-softmax merge of two partial attention results over disjoint key sets.

Naive form: lse = log(exp(lse_a) + exp(lse_b)); out = (exp(lse_a) out_a + exp(lse_b) out_b) / exp(lse).
Stable form used here (fp32):
    out <- out_a - sigmoid(lse_b - lse_a) * (out_a - out_b)
    lse <- lse_a - logsigmoid(lse_a - lse_b)
An empty side (lse = -inf) contributes nothing; two empty sides stay empty (out 0, lse -inf).
"""

from __future__ import annotations

import torch


def merge(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor):
    """out_* [B, H, T, D], lse_* [B, H, T] (float32, natural log) -> (out float32, lse float32)."""
    out_a, out_b = out_a.float(), out_b.float()
    lse_a, lse_b = lse_a.float(), lse_b.float()
    a_empty, b_empty = torch.isneginf(lse_a), torch.isneginf(lse_b)
    # Substitute finite values where a side is empty so that no inf - inf = nan appears.
    la = torch.where(a_empty, torch.zeros_like(lse_a), lse_a)
    lb = torch.where(b_empty, torch.zeros_like(lse_b), lse_b)
    w_b = torch.sigmoid(lb - la)
    w_b = torch.where(b_empty, torch.zeros_like(w_b), torch.where(a_empty, torch.ones_like(w_b), w_b))
    out = out_a - w_b.unsqueeze(-1) * (out_a - out_b)
    lse = la - torch.nn.functional.logsigmoid(la - lb)
    lse = torch.where(a_empty, lse_b, torch.where(b_empty, lse_a, lse))
    return out, lse


def merge_(acc_out: torch.Tensor, acc_lse: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor):
    """In-place `merge` into a float32 accumulator (acc_out [B, H, T, D], acc_lse [B, H, T]).

    Same result as merge to float32 rounding, with about half the memory traffic (two passes over
    acc_out, no temporaries of its size): what a long streamed loop of blocks wants.
        lse = logaddexp(lse_a, lse_b); out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b
    """
    assert acc_out.dtype == torch.float32 and acc_lse.dtype == torch.float32
    lse = torch.logaddexp(acc_lse, lse_b.float())
    safe = torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)  # both empty: weights 0, not nan
    w_a = torch.exp(acc_lse - safe).unsqueeze(-1)
    w_b = torch.exp(lse_b.float() - safe).unsqueeze(-1)
    acc_out.mul_(w_a).addcmul_(out_b, w_b)
    acc_lse.copy_(lse)
    return acc_out, acc_lse
