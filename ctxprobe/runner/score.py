"""Teacher-forced scoring of gold answers, several branches over one shared context.

A branch is (question_ids, answer_ids). The context is prefilled once; each branch's tokens ride
along layer by layer, attending to the context's KV and to their own tokens only, never to
another branch. At each answer position the argmax is compared with the gold token: all equal
is exactly "greedy decoding reproduces the gold answer", with no decode steps.

For a branch that fails, what the model really writes after its question decodes on from the
same pass (`continue_failing`): the context's K/V and the question's are kept, so only the decode
steps cost anything (ctxprobe/runner/loop.py continue_rider).

Shapes: Q question tokens, A answer tokens, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ctxprobe.errors import UserError
from ctxprobe.runner.loop import NonFiniteLogits, continue_rider, prefill
from ctxprobe.runner.memory import Settings, auto_settings


@dataclass
class BranchScore:
    exact: bool          # every argmax over the answer positions equals the gold token
    logprob: float       # sum of the gold tokens' log-probabilities
    first_rank: int      # rank of the first gold token among the vocabulary, 1 = most likely
    greedy: list[int]    # the argmax token at each answer position
    # the rank of every gold token at its position (teacher-forced: the gold tokens before it
    # fed in); gold_ranks[0] == first_rank. The caller picks the informative one.
    gold_ranks: list[int] = field(default_factory=list)
    generated: list[int] | None = None   # failing, with continue_failing: the greedy continuation


def read_answer(rows_AV: torch.Tensor, answer_ids) -> BranchScore:
    """rows_AV[j] = the logits that predict answer token j."""
    rows = rows_AV.float()
    if not bool(torch.isfinite(rows).all()):   # NaN would read as rank 1 and a score of 0
        raise NonFiniteLogits("non-finite logits at the answer positions: the cell is not scored")
    gold = torch.as_tensor(list(answer_ids), dtype=torch.long)
    greedy = rows.argmax(-1)
    logp = torch.log_softmax(rows, dim=-1)
    ranks = ((rows > rows[torch.arange(len(gold)), gold][:, None]).sum(-1) + 1).tolist()
    return BranchScore(exact=bool((greedy == gold).all()),
                       logprob=float(logp[torch.arange(len(gold)), gold].sum()),
                       first_rank=int(ranks[0]), greedy=greedy.tolist(),
                       gold_ranks=[int(r) for r in ranks])


def _check(context_ids, branches):
    if len(context_ids) == 0:
        raise UserError("score: the context is empty; pass at least one context token")
    for i, (q, a) in enumerate(branches):
        if len(a) == 0:
            raise UserError(f"score: branch {i} has no answer tokens; each branch needs a gold answer")


def score(model, context_ids, branches, *, settings: Settings | None = None, ring=None,
          continue_failing: int = 0, stop_ids=None) -> list[BranchScore]:
    """Prefill context_ids once; score each (question_ids, answer_ids) branch against it.
    ring: a World to shard the context over (None: this process).
    continue_failing: for each branch that fails, also its greedy continuation after the question,
    up to this many tokens, stopping after any of stop_ids (BranchScore.generated): what `generate`
    writes for context + question, decoded on from this pass's K/V."""
    branches = [(list(q), list(a)) for q, a in branches]
    _check(context_ids, branches)
    # The last answer token predicts nothing that is scored, so it need not be run.
    riders = [q + a[:-1] for q, a in branches]
    with_tokens = [i for i, r in enumerate(riders) if r]
    keep = continue_failing > 0
    if keep and settings is None and ring is None:   # plan for the kept K/V and the decoded tokens
        settings = auto_settings(model, len(context_ids), keep_kv=True, extra_tokens=max(
            [len(r) for r in riders] + [len(q) + continue_failing for q, _ in branches]))
    done = prefill(model, context_ids, settings=settings, riders=[riders[i] for i in with_tokens], ring=ring,
                   keep_kv=keep)
    try:
        rows_of = dict(zip(with_tokens, done.rider_logits))
        results = []
        for i, (q, a) in enumerate(branches):
            # Row j of `rows` predicts the token after position j: the context's last row first.
            rows = torch.cat([done.last_logits[None], rows_of[i]]) if i in rows_of else done.last_logits[None]
            results.append(read_answer(rows[len(q):len(q) + len(a)], a))
        for i, ((q, _), result) in enumerate(zip(branches, results)):
            if keep and not result.exact:
                rider = with_tokens.index(i) if i in rows_of else None
                result.generated = continue_rider(model, done, rider, len(q), result.greedy[0], continue_failing,
                                                  stop_ids)
    finally:
        done.close()
    return results
