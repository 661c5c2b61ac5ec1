"""Teacher-forced scoring over a shared context equals separate full forwards per branch; branches do
not see each other; `exact` agrees with actual greedy generation; generation equals a plain greedy
loop over `.logits()`."""

import pytest
import torch

from ctxprobe.runner import Settings, generate, score, score_reference
from runner_toy import ToyModel

SMALL = Settings(chunk_tokens=23, kv_block_tokens=8)


@pytest.fixture(scope="module")
def checkpoint(tiny_models):
    return tiny_models


@pytest.fixture(scope="module")
def llama4(checkpoint):
    return checkpoint("llama4")


def rand_ids(n, vocab, seed):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def same(a, b):
    assert a.exact == b.exact and a.first_rank == b.first_rank and a.greedy == b.greedy
    assert abs(a.logprob - b.logprob) <= 1e-3 * max(1.0, abs(b.logprob))


def branches_for(m, ctx, seed):
    V = m.config.vocab_size
    q1, q2 = rand_ids(4, V, seed), rand_ids(1, V, seed + 1)
    greedy = generate(m, ctx + q1, 3)   # one branch whose answer IS the greedy continuation
    return [(q1, greedy), (q2, rand_ids(3, V, seed + 2)), ([], rand_ids(2, V, seed + 3)),
            (rand_ids(9, V, seed + 4), rand_ids(1, V, seed + 5))]


@pytest.mark.parametrize("which", ["toy", "llama", "mixtral", "qwen3_moe", "llama4"])
def test_score_equals_full_forward_per_branch(which, checkpoint):
    m = ToyModel() if which == "toy" else checkpoint(which)
    ctx = rand_ids(70 if which == "toy" else 140, m.config.vocab_size, seed=7)
    branches = branches_for(m, ctx, seed=11)
    got, want = score(m, ctx, branches, settings=SMALL), score_reference(m, ctx, branches)
    for g, w in zip(got, want):
        same(g, w)
    assert got[0].exact and got[0].first_rank == 1


def test_branches_do_not_see_each_other():
    m = ToyModel(seed=3)
    ctx = rand_ids(40, m.config.vocab_size, seed=1)
    branches = branches_for(m, ctx, seed=5)
    alone = [score(m, ctx, [b], settings=SMALL)[0] for b in branches]
    together = score(m, ctx, branches, settings=SMALL)
    reordered = score(m, ctx, branches[::-1], settings=SMALL)[::-1]
    for a, t, r in zip(alone, together, reordered):
        same(t, a)
        same(r, a)


@pytest.mark.parametrize("seed", range(3))
def test_exact_agrees_with_greedy_generation(seed):
    """On random tiny models: exact is True exactly when generate() reproduces the answer."""
    m = ToyModel(seed=seed, masks=({}, {"chunk_size": 6}))
    V = m.config.vocab_size
    ctx = rand_ids(30, V, seed=seed)
    cases, generated = [], []
    for i in range(4):
        q = rand_ids(1 + i % 3, V, seed=100 * seed + i)
        gen = generate(m, ctx + q, 4, settings=SMALL)   # greedy is deterministic: n tokens = a prefix
        wrong_last = gen[:-1] + [(gen[-1] + 1) % V]
        for answer in (gen, gen[:2], wrong_last, rand_ids(3, V, seed=200 * seed + i)):
            cases.append((q, answer))
            generated.append(gen)
    results = score(m, ctx, cases, settings=SMALL)
    assert any(r.exact for r in results) and not all(r.exact for r in results)
    for (q, answer), gen, r in zip(cases, generated, results):
        assert r.exact == (gen[:len(answer)] == answer)
        assert r.greedy[0] == gen[0]


@pytest.mark.parametrize("kv_tier", ["device", "disk"])
def test_generate_equals_greedy_loop_over_logits(kv_tier, tmp_path):
    m = ToyModel(seed=2)
    prompt = rand_ids(33, m.config.vocab_size, seed=4)
    want, ids = [], list(prompt)
    for _ in range(6):
        want.append(int(m.logits(ids)[-1].argmax()))
        ids.append(want[-1])
    settings = Settings(chunk_tokens=10, kv_block_tokens=4, kv_tiers=kv_tier, offload_dir=str(tmp_path))
    assert generate(m, prompt, 6, settings=settings) == want
    assert generate(m, prompt, 6, stop_ids=[want[2]], settings=settings) == want[:3]
    assert generate(m, prompt, 0) == []


def test_bad_branches_are_refused():
    from ctxprobe.errors import UserError

    m = ToyModel()
    with pytest.raises(UserError, match="branch 1 has no answer"):
        score(m, [1, 2], [([1], [2]), ([3], [])])
    with pytest.raises(UserError, match="context is empty"):
        score(m, [], [([1], [2])])


def test_score_and_generate_without_settings_use_the_planner(llama4):
    """score / generate with no settings plan their own and agree with the reference and small chunks."""
    ctx = rand_ids(90, llama4.config.vocab_size, seed=21)
    branches = [(rand_ids(3, 300, 1), rand_ids(2, 300, 2)), ([], rand_ids(1, 300, 3))]
    for g, w in zip(score(llama4, ctx, branches), score_reference(llama4, ctx, branches)):
        same(g, w)
    assert generate(llama4, ctx, 3) == generate(llama4, ctx, 3, settings=SMALL)
