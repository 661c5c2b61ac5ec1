"""A failing branch's real greedy answer comes from the scored pass's own K/V (issue 19 item 10).

`score(..., continue_failing=N)` keeps the context's K/V and each branch's question K/V from the
teacher-forced pass and decodes on from them: the text equals what `generate` writes for the same
prompt (context + question), on every K/V tier and on a ring, and the prompt's layers run once,
not twice (a spy counts the passes of the prompt through the blocks)."""

from __future__ import annotations

import pytest
import torch

from ctxprobe.runner import Settings, generate, score
from ctxprobe.runner.context.local import LocalContext
from runner_toy import ToyModel

# Random models fail nearly every branch; the empty question decodes from the context alone.
BRANCHES = [([5, 6, 7], [8, 9, 10]), ([], [11, 12]), ([13], [14]), ([], [15])]
N = 6


def _prompt(model, n: int = 150) -> list[int]:
    g = torch.Generator().manual_seed(n)
    return torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist()


def _settings(tier: str, offload_dir: str) -> Settings:
    return Settings(chunk_tokens=37, kv_block_tokens=16, kv_tiers=tier, offload_dir=offload_dir)


def _assert_generation_equals_generate(model, tier, tmp_path, ring=None):
    ids, settings = _prompt(model), _settings(tier, str(tmp_path))
    plain = score(model, ids, BRANCHES, settings=settings, ring=ring)
    scores = score(model, ids, BRANCHES, settings=settings, ring=ring, continue_failing=N)
    assert [(s.exact, s.greedy, s.logprob) for s in scores] == [(s.exact, s.greedy, s.logprob) for s in plain]
    failing = [(s, q) for s, (q, _) in zip(scores, BRANCHES) if not s.exact]
    assert failing, "the case needs a failing branch"
    for s, q in failing:
        assert s.generated == generate(model, ids + q, N, settings=settings, ring=ring)
        assert len(s.generated) == N
    assert all(s.generated is None for s in scores if s.exact)
    assert list(tmp_path.iterdir()) == []     # the kept disk-tier K/V is gone


@pytest.mark.parametrize("tier", ["device", "host", "disk"])
def test_toy_model_generation_from_the_scored_pass_equals_generate(tier, tmp_path):
    _assert_generation_equals_generate(ToyModel(), tier, tmp_path)


@pytest.mark.parametrize("tier", ["device", "disk"])
def test_a_world_of_one_decodes_on_from_its_shards(tier, tmp_path):
    from ctxprobe.runner.distributed import World

    _assert_generation_equals_generate(ToyModel(), tier, tmp_path, ring=World(rank=0, size=1))


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    pytest.importorskip("transformers")
    from tiny_models import save_tiny
    from ctxprobe.runner import load_model

    return {f: load_model(save_tiny(tmp_path_factory.mktemp(f), f)[0]) for f in ("llama", "llama4", "mixtral",
                                                                                  "qwen3_moe")}


@pytest.mark.parametrize("family", ["llama", "llama4", "mixtral", "qwen3_moe"])
@pytest.mark.parametrize("tier", ["device", "host", "disk"])
def test_tiny_families_generation_from_the_scored_pass_equals_generate(families, family, tier, tmp_path):
    _assert_generation_equals_generate(families[family], tier, tmp_path)


def test_the_prompt_runs_through_the_layers_once_per_scored_cell(monkeypatch, tmp_path):
    model, passes = ToyModel(), []
    real = LocalContext.prompt_layer

    def counting(self, layer, block):
        passes.append((self.T, layer))
        return real(self, layer, block)

    monkeypatch.setattr(LocalContext, "prompt_layer", counting)
    ids = _prompt(model)
    scores = score(model, ids, BRANCHES, settings=_settings("host", str(tmp_path)), continue_failing=N)
    assert sum(not s.exact for s in scores) >= 2      # several branches decode from the one pass
    assert passes == [(len(ids), layer) for layer in range(len(model.blocks))]


def test_a_stop_token_ends_the_generation_as_generate_ends_it(tmp_path):
    model, settings = ToyModel(), _settings("device", str(tmp_path))
    ids = _prompt(model)
    q = BRANCHES[0][0]
    written = generate(model, ids + q, N, settings=settings)
    stop = [written[2]]
    [s, *_] = score(model, ids, BRANCHES, settings=settings, continue_failing=N, stop_ids=stop)
    assert s.generated == generate(model, ids + q, N, stop_ids=stop, settings=settings)
    assert s.generated[-1] == stop[0] and len(s.generated) <= 3


def test_a_failing_cell_of_a_run_runs_its_prompt_once(monkeypatch, tmp_path):
    """`ctxprobe run` with --generate-failing (default 32) on the built-in model at 8K, where it fails
    (tests/test_response_kind.py checks that text against `generate`): one pass of the prompt."""
    import json
    from collections import Counter

    from click.testing import CliRunner

    from ctxprobe.builtin import MODEL_DIR
    from ctxprobe.cli import main
    from ctxprobe.store import Store

    passes, real = Counter(), LocalContext.prompt_layer

    def counting(self, layer, block):
        passes[self.T] += 1
        return real(self, layer, block)

    monkeypatch.setattr(LocalContext, "prompt_layer", counting)
    db = tmp_path / "r.db"
    result = CliRunner().invoke(main, ["run", "--model", "builtin", "--probe", "niah", "--lengths", "8k",
                                       "--depths", "50", "--name", "once", "--db", str(db), "--quiet"])
    assert result.exit_code == 0, result.output
    with Store(db, readonly=True) as store:
        [cell] = store.cells(store.get_run("once").id)
    assert cell["exact"] is False and cell["generation"] is not None
    n_layers = json.loads((MODEL_DIR / "config.json").read_text())["num_hidden_layers"]
    assert list(passes.values()) == [n_layers]     # one prompt (context), each layer once
