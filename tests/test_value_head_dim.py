"""The runner with a value head dim unlike the query/key one (issue 14 S12): Dv = 12, Dk = 8.

Both K/V strategies carry (Dk, Dv) into their stores (attention.KVStore v_head_dim=), so the
streamed prefill equals the plain forward on every tier, in one process and on a ring (a world
of one and 2 gloo ranks); the memory plan counts Hkv * (Dk + Dv) bytes of K/V per token.
(DeepSeek-V3's MLA, with V inside K: tests/test_models_deepseek_v3.py.)"""

from __future__ import annotations

import datetime
import itertools
import os

import pytest
import torch

from ctxprobe.runner import Settings, generate, prefill, score
from processes import finish_rank, spawn_world
from runner_toy import ToyModel

DV = 12
TOL = 1e-4


def _model():
    return ToyModel(v_head_dim=DV)


def _ids(model, n: int = 100) -> list[int]:
    g = torch.Generator().manual_seed(n)
    return torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist()


def _settings(kv: str, hidden: str, offload_dir: str) -> Settings:
    return Settings(chunk_tokens=37, kv_block_tokens=16, kv_tiers=kv, hidden_tier=hidden, offload_dir=offload_dir)


def test_the_toy_model_has_a_wider_value_head():
    block = _model().blocks[0]
    q, k, v = block.qkv(torch.randn(5, 32), torch.arange(5))
    assert q.shape[-1] == k.shape[-1] == 8 and v.shape[-1] == DV and block.wo.shape == (32, 4 * DV)


@pytest.mark.parametrize("kv,hidden", list(itertools.product(("device", "host", "disk"), ("host", "disk"))))
def test_prefill_equals_the_plain_forward_on_every_tier(kv, hidden, tmp_path):
    model = _model()
    ids = _ids(model)
    got = prefill(model, ids, settings=_settings(kv, hidden, str(tmp_path)), all_logits=True).logits
    assert (got - model.logits(ids)).abs().max().item() <= TOL


@pytest.mark.parametrize("kv", ["device", "host", "disk"])
def test_a_world_of_one_equals_the_plain_forward(kv, tmp_path):
    from ctxprobe.runner.distributed import World

    model = _model()
    ids = _ids(model)
    got = prefill(model, ids, settings=_settings(kv, "host", str(tmp_path)), all_logits=True,
                  ring=World(rank=0, size=1)).logits
    assert (got - model.logits(ids)).abs().max().item() <= TOL


def test_score_generate_and_decoding_on_from_the_scored_pass(tmp_path):
    model, settings = _model(), _settings("host", "host", str(tmp_path))
    ids, want = _ids(model), []
    for _ in range(4):
        want.append(int(model.logits(ids + want)[-1].argmax()))
    assert generate(model, ids, 4, settings=settings) == want
    [s] = score(model, ids, [([], [(want[0] + 1) % 61])], settings=settings, continue_failing=4)
    assert not s.exact and s.generated == want


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from ctxprobe.runner.distributed import World

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    results = {}
    try:
        model = _model()
        ids = _ids(model)
        want = model.logits(ids)
        for kv in ("device", "host", "disk"):
            offload = os.path.join(out_dir, f"offload{rank}")
            os.makedirs(offload, exist_ok=True)
            got = prefill(model, ids, settings=_settings(kv, "host", offload), all_logits=True,
                          ring=World(rank=rank, size=world_size)).logits
            results[kv] = (got - want).abs().max().item()
    finally:
        finish_rank(out_dir, rank, results)


@pytest.mark.timeout(120)
def test_two_gloo_ranks_equal_the_plain_forward(tmp_path):
    ranks = spawn_world(_worker, 2, str(tmp_path))
    for results in ranks:
        assert set(results) == {"device", "host", "disk"}, ranks
        assert all(err <= TOL for err in results.values()), ranks


def test_the_memory_plan_counts_k_and_v_by_their_own_head_dims():
    from ctxprobe.runner.memory import ModelShape
    from ctxprobe.runner.presets import preset_config

    scout = ModelShape.from_config(preset_config("scout-4l"), 2)
    assert scout.kv_bytes_per_token == 8 * (128 + 128) * 2
    mla = ModelShape.from_config(preset_config("deepseek-v3-4l"), 2)   # V is K's first 512 columns
    assert (mla.n_kv_heads, mla.head_dim, mla.v_head_dim, mla.values_in_keys) == (1, 576, 512, True)
    assert mla.kv_bytes_per_token == 576 * 2
    wide = ModelShape(dim=64, vocab=10, n_heads=4, n_kv_heads=2, head_dim=8, v_head_dim=DV, ffn_width=96,
                      dtype_bytes=4)
    assert wide.kv_bytes_per_token == 2 * (8 + DV) * 4
