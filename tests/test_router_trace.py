"""Router traces (issue 17 item 5): the recorder's per-bucket sums, made on the device while the
runner prefills, equal a slow reference that keeps every token's routing from the plain forward
(`Model.logits`) and buckets it in Python; on every KV and hidden-state tier, with branches riding
behind the prompt (not counted), on the ring runner with a world of one and with 2 gloo ranks."""

import math

import numpy as np
import pytest
import torch

from ctxprobe.backends.router_recording import PromptRecorder, buckets_of
from ctxprobe.models.router_tap import observe_routers, routed_layers
from ctxprobe.router_trace import RouterTrace, bucket_of, bucket_start, n_buckets, pooled
from ctxprobe.runner import Settings, prefill, score

PROMPT_LEN = 150
MOE_FAMILIES = ["mixtral", "qwen3_moe", "llama4"]


class EveryToken:
    """The slow reference observer: each routed token's (layer, position, scores, experts), kept."""

    def __init__(self):
        self.rows = []

    def see(self, layer, pos_T, scores_TE, idx_TK):
        for p, s, i in zip(pos_T.tolist(), scores_TE.float().tolist(), idx_TK.tolist()):
            self.rows.append((layer, p, s, i))

    def trace(self, prompt_tokens: int) -> RouterTrace:
        layers = sorted({r[0] for r in self.rows})
        B, E = n_buckets(prompt_tokens), len(self.rows[0][2])
        load, tokens, margin = np.zeros((len(layers), B, E)), np.zeros((len(layers), B)), np.zeros((len(layers), B))
        for layer, p, scores, experts in self.rows:
            if p >= prompt_tokens:
                continue
            l, b = layers.index(layer), bucket_of(p)
            for e in experts:
                load[l, b, e] += 1
            tokens[l, b] += 1
            top = sorted(scores, reverse=True)
            margin[l, b] += top[0] - top[1]
        return RouterTrace(layers, load, tokens, np.where(tokens > 0, margin / np.maximum(tokens, 1), np.nan))


def ids(n, vocab, seed=1):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def reference(model, prompt) -> RouterTrace:
    watch = EveryToken()
    with observe_routers(model, watch):
        model.logits(prompt)
    return watch.trace(len(prompt))


def assert_same(got: RouterTrace, want: RouterTrace):
    assert got.layers == want.layers
    assert np.array_equal(got.tokens_LB, want.tokens_LB)
    assert np.array_equal(got.load_LBE, want.load_LBE)
    assert np.allclose(got.margin_LB, want.margin_LB, atol=1e-5, equal_nan=True)


def test_buckets_are_log_spaced_and_exact_at_powers_of_two():
    positions = [0, 1, 2, 3, 4, 7, 8, 1023, 1024, 1025] + [2**k + d for k in range(11, 41) for d in (-1, 0, 1)]
    assert buckets_of(torch.tensor(positions)).tolist() == [bucket_of(p) for p in positions]
    assert [bucket_of(p) for p in (0, 1, 2, 3, 4, 7, 8)] == [0, 1, 2, 2, 3, 3, 4]
    for b in range(1, 30):
        assert bucket_of(bucket_start(b)) == b and bucket_of(bucket_start(b) - 1) == b - 1
    assert n_buckets(1) == 1 and n_buckets(150) == 9 and n_buckets(2**20) == 21


def test_only_moe_layers_are_tapped_and_taps_go_away(tiny_models):
    assert routed_layers(tiny_models("llama")) == []
    assert routed_layers(tiny_models("qwen3_moe")) == [0, 2]     # layer 1 is dense (mlp_only_layers)
    assert routed_layers(tiny_models("llama4")) == [1, 3]        # interleave_moe_layer_step 2
    m = tiny_models("mixtral")
    with observe_routers(m, EveryToken()) as layers:
        assert layers == [0, 1] and all(m.blocks[i].ffn.tap is not None for i in layers)
    assert all(m.blocks[i].ffn.tap is None for i in layers)


@pytest.mark.parametrize("family", MOE_FAMILIES)
@pytest.mark.parametrize("kv_tier,hidden_tier", [("device", "host"), ("host", "host"), ("disk", "disk")])
def test_recorded_prefill_equals_every_token_reference(tiny_models, family, kv_tier, hidden_tier, tmp_path):
    m = tiny_models(family)
    prompt = ids(PROMPT_LEN, m.config.vocab_size)
    want = reference(m, prompt)
    recorder = PromptRecorder()
    recorder.start(len(prompt))
    settings = Settings(chunk_tokens=37, kv_block_tokens=16, kv_tiers=kv_tier, hidden_tier=hidden_tier,
                        offload_dir=str(tmp_path))
    with observe_routers(m, recorder):
        # Two branches ride behind the prompt: their tokens are routed too, but are not the prompt's.
        score(m, prompt, [([5, 6], [7, 8]), ([9], [10, 11, 12])], settings=settings)
    got = recorder.trace()
    assert_same(got, want)
    assert got.tokens_LB.sum(1).tolist() == [PROMPT_LEN] * len(got.layers)
    assert (got.load_LBE.sum(-1) == got.tokens_LB * m.config.top_k).all()


def test_a_recorder_restarted_forgets_the_last_prompt(tiny_models):
    m = tiny_models("mixtral")
    recorder = PromptRecorder()
    with observe_routers(m, recorder):
        recorder.start(40)
        prefill(m, ids(40, m.config.vocab_size, seed=3))
        recorder.start(20)
        prefill(m, ids(20, m.config.vocab_size, seed=4))
    assert_same(recorder.trace(), reference(m, ids(20, m.config.vocab_size, seed=4)))


def test_generation_counts_the_prompt_only(tiny_models):
    from ctxprobe.runner import generate

    m = tiny_models("mixtral")
    prompt = ids(70, m.config.vocab_size, seed=5)
    recorder = PromptRecorder()
    recorder.start(len(prompt))
    with observe_routers(m, recorder):
        generate(m, prompt, 6)
    assert_same(recorder.trace(), reference(m, prompt))


def test_ring_runner_with_a_world_of_one(tiny_models):
    from ctxprobe.runner.distributed import World

    m = tiny_models("llama4")
    prompt = ids(PROMPT_LEN, m.config.vocab_size, seed=6)
    recorder = PromptRecorder()
    recorder.start(len(prompt))
    with observe_routers(m, recorder):
        prefill(m, prompt, riders=[[1, 2, 3]], settings=Settings(chunk_tokens=29), ring=World(rank=0, size=1))
    assert_same(recorder.trace(World(rank=0, size=1)), reference(m, prompt))


def _ring_worker(rank, world_size, port, out_dir, path):
    import torch.distributed as dist

    from processes import finish_rank

    from ctxprobe.runner import load_model
    from ctxprobe.runner import prefill
    from ctxprobe.runner.distributed import World

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    results = {}
    try:
        m = load_model(path, device="cpu", dtype="float32")
        prompt = ids(PROMPT_LEN, m.config.vocab_size, seed=7)
        recorder = PromptRecorder()
        recorder.start(len(prompt))
        with observe_routers(m, recorder):
            prefill(m, prompt, riders=[[4, 5]], ring=World(rank=rank, size=world_size),
                    settings=Settings(chunk_tokens=23, kv_block_tokens=8, kv_tiers="host"))
        meta, blob = recorder.trace(World(rank=rank, size=world_size)).encode()
        results = {"meta": meta, "blob": blob.hex()}
        # A one-token prompt leaves one rank without tokens: it still takes part in adding the sums.
        with observe_routers(m, recorder) as layers:
            recorder.start(1, layers, m.config.n_experts)
            prefill(m, prompt[:1], ring=World(rank=rank, size=world_size))
        one = recorder.trace(World(rank=rank, size=world_size))
        results["one_token"] = [one.tokens_LB.tolist(), one.load_LBE.sum(-1).tolist()]
    finally:
        finish_rank(out_dir, rank, results)


@pytest.mark.timeout(300)
def test_ring_runner_over_two_gloo_ranks_adds_the_shards(tiny_models, tmp_path_factory, tmp_path):
    from processes import spawn_world

    from tiny_models import save_tiny

    path, _ = save_tiny(tmp_path_factory.mktemp("mixtral-ring"), "mixtral", max_shard_size="2MB")
    per_rank = spawn_world(_ring_worker, 2, str(tmp_path), str(path))
    from ctxprobe.runner import load_model

    m = load_model(path, device="cpu", dtype="float32")
    want = reference(m, ids(PROMPT_LEN, m.config.vocab_size, seed=7))
    for r in per_rank:
        assert_same(RouterTrace.decode(r["meta"], bytes.fromhex(r["blob"])), want)
        assert r["one_token"] == [[[1], [1]], [[2], [2]]]   # per layer: 1 token in 1 bucket, 2 choices (top-2)


def test_encoding_round_trips_and_pooling_adds():
    rng = np.random.default_rng(0)
    load = rng.integers(0, 50, size=(3, 5, 4))
    tokens = load.sum(-1) // 2
    tokens[1, 4] = 0
    margin = np.where(tokens > 0, rng.random((3, 5)), np.nan)
    t = RouterTrace((1, 3, 5), load, tokens, margin)
    back = RouterTrace.decode(*t.encode())
    assert back.layers == (1, 3, 5) and np.array_equal(back.load_LBE, load)
    assert np.array_equal(back.tokens_LB, tokens)
    assert np.allclose(back.margin_LB, margin, atol=1e-6, equal_nan=True)   # float32 on disk
    short = RouterTrace((1, 3, 5), load[:, :2], tokens[:, :2], margin[:, :2])
    both = pooled([t, short])
    assert both.n_buckets == 5 and np.array_equal(both.load_LBE[:, :2], 2 * load[:, :2])
    assert np.allclose(both.margin_LB[:, :2], margin[:, :2], equal_nan=True)   # equal weights, same margin
    with pytest.raises(ValueError, match="different models"):
        pooled([t, RouterTrace((0,), load[:1], tokens[:1], margin[:1])])


def test_entropy_and_top_expert():
    load = np.array([[[10, 0, 0, 0], [5, 5, 0, 0], [3, 3, 3, 3], [0, 0, 0, 0]]])
    t = RouterTrace((0,), load, load.sum(-1), np.array([[0.5, 0.1, 0.0, np.nan]]))
    h = t.entropy_LB()[0]
    assert h[:3].tolist() == [0.0, 1.0, 2.0] and math.isnan(h[3])
    assert t.top_expert_LB()[0].tolist() == [0, 0, 0, -1]
