"""The sharded (torchrun) runner with each rank's K/V share in the host or disk tier.

Oracle: the one-process runner (`prefill`, `generate`), itself tested against transformers. Gloo
worlds of 2 and 3 processes (each spawned once per session) run every case with the K/V of every
layer forced into "host" and into "disk" and report errors and file counts, which the tests below
assert on. The last case of each world makes one rank fail in the middle of a pass: every rank
must leave its offload directory empty.
"""

from __future__ import annotations

import datetime
import itertools
import os
import traceback

import pytest
import torch

from processes import finish_rank, spawned_once

TOL = 1e-5
TIERS = ("host", "disk")
WORLD_SIZES = (2, 3)
BRANCHES = [([5, 6, 7], [8, 9, 10]), ([], [11, 12]), ([13], [14])]
RIDERS = [q + a[:-1] for q, a in BRANCHES if q + a[:-1]]
# Chunks of 37 tokens and K/V blocks of 16 divide no shard; zigzag pieces straddle blocks.
CHUNK, BLOCK = 37, 16
# gpt-oss: sinks and windows of 50 that cross the shards of a 97-token prompt; DeepSeek-V3: latent
# attention whose V lives inside K (a value head unlike the key's) on every rank's tier.
FAMILIES = ("llama4", "llama", "gpt_oss", "deepseek_v3")


def lengths(family: str, world_size: int) -> tuple[int, ...]:
    """Llama 4 (attention chunk 64): one prompt long enough for shards aligned to the chunk
    (chunked layers keep their K/V on the rank) and one shorter (it crosses ranks)."""
    return (2 * world_size * 64 + 13, 100) if family == "llama4" else (97,)


def _settings(tier: str, offload_dir: str):
    from ctxprobe.runner import Settings

    return Settings(chunk_tokens=CHUNK, kv_block_tokens=BLOCK, kv_tiers=tier, offload_dir=offload_dir)


def _error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _compare(model, world, seq_len: int, tier: str, offload_dir: str, seen: dict) -> dict:
    """Sharded with K/V in `tier` against one process: all logits, rider logits, scores (through
    `score`), generated tokens."""
    from ctxprobe.runner import generate, prefill, score

    g = torch.Generator().manual_seed(seq_len)
    ids = torch.randint(0, model.config.vocab_size, (seq_len,), generator=g).tolist()
    one = prefill(model, ids, all_logits=True, riders=RIDERS)
    one_last = prefill(model, ids, riders=RIDERS).last_logits
    seen.update(stores=0, files=0)
    many = prefill(model, ids, settings=_settings(tier, offload_dir), all_logits=True, riders=RIDERS, ring=world)
    many_last = prefill(model, ids, settings=_settings(tier, offload_dir), ring=world).last_logits
    stores_per_pass = seen["stores"] // 2
    one_tokens = generate(model, ids, 5)
    many_tokens = generate(model, ids, 5, settings=_settings(tier, offload_dir), ring=world)
    one_scores = score(model, ids, BRANCHES)
    before = seen["stores"]
    many_scores = score(model, ids, BRANCHES, settings=_settings(tier, offload_dir), ring=world)
    score_stores = seen["stores"] - before
    return dict(logits=_error(many.logits, one.logits), last=_error(many_last, one_last),
                riders=max(_error(a, b) for a, b in zip(many.rider_logits, one.rider_logits)),
                generated_equal=many_tokens == one_tokens, stores_per_pass=[stores_per_pass, score_stores],
                scores_equal=[(s.exact, s.first_rank, s.greedy) == (o.exact, o.first_rank, o.greedy)
                              for s, o in zip(many_scores, one_scores)],
                logprob=max(abs(s.logprob - o.logprob) for s, o in zip(many_scores, one_scores)),
                most_files=seen["files"], left=leftovers(offload_dir),
                logits_sum=many.logits.sum().item())


# Disk-tier files are unlinked as soon as they are made (attention/kv_store.py), so a directory
# listing cannot show them: the workers count the disk stores still open instead.
DISK_STORES = []


def leftovers(offload_dir: str) -> list[str]:
    """Files in the offload dir, plus one entry per disk-tier store not closed."""
    return sorted(os.listdir(offload_dir)) + ["open disk store"] * open_disk_stores()


def open_disk_stores() -> int:
    return sum(store._file is not None for store in DISK_STORES)


def _fail_mid_pass(model, world, offload_dir: str) -> dict:
    """The last rank raises in layer 1 with layer 0's K/V kept on disk; the others see the
    failure as an error in a collective. Every rank reports what its offload directory holds."""
    from ctxprobe.runner import prefill

    failing = world.rank == world.size - 1
    files_when_failing = []
    block = model.blocks[1]
    real_finish = block.finish

    def finish_then_fail(*args):
        files_when_failing.append(open_disk_stores())
        raise RuntimeError("injected failure")

    if failing:
        block.finish = finish_then_fail
    try:
        ids = [(7 * i) % model.config.vocab_size for i in range(2 * world.size * 64 + 13)]
        prefill(model, ids, keep_kv=True, riders=RIDERS, settings=_settings("disk", offload_dir), ring=world)
        error = None
    except RuntimeError as e:
        error = str(e)
    finally:
        block.finish = real_finish
    return dict(error=error, files_when_failing=files_when_failing, left=leftovers(offload_dir))


def _worker(rank: int, world_size: int, port: int, out_dir: str, models: dict) -> None:
    import torch.distributed as dist

    from ctxprobe import attention
    from ctxprobe.runner import load_model
    from ctxprobe.runner.distributed import World

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=30))
    world = World(rank=rank, size=world_size)
    offload_dir = os.path.join(out_dir, f"offload{rank}")
    os.makedirs(offload_dir)
    seen = dict(stores=0, files=0)
    real_init = attention.KVStore.__init__

    def counting_init(self, *args, **kwargs):    # proof that the shares went to the tier asked for
        real_init(self, *args, **kwargs)
        if self.tier != "device" and kwargs.get("block_size") == BLOCK:
            seen["stores"] += 1
            if self.tier == "disk":
                DISK_STORES.append(self)
            seen["files"] = max(seen["files"], open_disk_stores())

    attention.KVStore.__init__ = counting_init
    results = {}
    try:
        for family, path in models.items():
            model = load_model(path)
            for seq_len, tier in itertools.product(lengths(family, world_size), TIERS):
                results[f"{family}-{seq_len}-{tier}"] = _compare(model, world, seq_len, tier, offload_dir, seen)
        dist.barrier()
        results["failure"] = _fail_mid_pass(load_model(models["llama4"]), world, offload_dir)
    except BaseException:
        results["worker_error"] = traceback.format_exc()
    finally:
        finish_rank(out_dir, rank, results)     # leaves the process (after the failure case the
        # group is broken: a peer left mid-collective, which is when gloo's teardown aborts most)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    from tiny_models import save_tiny

    return {family: str(save_tiny(tmp_path_factory.mktemp(family), family)[0]) for family in FAMILIES}


@pytest.fixture
def world(request, tmp_path_factory, models):
    """Per-rank result dicts of one spawned gloo world (spawned once per size per session)."""
    return spawned_once(tmp_path_factory, "sharded_tiers", _worker, request.param, lambda: (models,))


def _cases(world_size: int) -> list[str]:
    return [f"{family}-{n}-{tier}" for family in FAMILIES for n in lengths(family, world_size)
            for tier in TIERS]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world", WORLD_SIZES, indirect=True)
def test_sharded_runner_with_kv_in_a_tier_equals_one_process(world):
    world_size = len(world)
    n_layers = {"llama4": 4, "llama": 2, "gpt_oss": 3, "deepseek_v3": 3}
    assert [r.get("worker_error") for r in world] == [None] * world_size, world
    for case in _cases(world_size):
        for rank, results in enumerate(world):
            got = results[case]
            assert got["logits"] <= TOL and got["last"] <= TOL and got["riders"] <= TOL, (case, rank, got)
            assert got["generated_equal"], (case, rank, got)
            assert all(got["scores_equal"]) and got["logprob"] <= 1e-4, (case, rank, got)
            assert got["stores_per_pass"] == [n_layers[case.split("-")[0]]] * 2, (case, rank, got)
            assert got["left"] == [], (case, rank, got)     # every store closed, disk files deleted
            if case.endswith("disk"):
                assert got["most_files"] >= 1, (case, rank, got)
        assert len({r[case]["logits_sum"] for r in world}) == 1, case   # every rank returns the same logits


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world", WORLD_SIZES, indirect=True)
def test_a_rank_that_fails_mid_pass_leaves_no_offload_files(world):
    world_size = len(world)
    for rank, results in enumerate(world):
        got = results["failure"]
        assert got["error"] is not None, (rank, got)           # every rank stops, none hangs
        assert got["left"] == [], (rank, got)
        if rank == world_size - 1:
            assert got["error"] == "injected failure"
            assert got["files_when_failing"] == [2], got        # layer 0 kept + layer 1 when it failed


# --- one process ------------------------------------------------------------------------------

@pytest.fixture
def one_thread():
    """Tiny matmuls: a second intra-op thread only adds waiting (seconds on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("tier", TIERS)
def test_a_world_of_one_with_kv_in_a_tier_equals_the_runner(models, tier, tmp_path, one_thread):
    """The sharded code without a process group, K/V in a tier: every step but the collectives."""
    from ctxprobe.runner import load_model, prefill
    from ctxprobe.runner.distributed import World

    model = load_model(models["llama4"])
    # 126 tokens: the 5 generated tokens cross into the next 64-token chunk of the local layers.
    got = _compare(model, World(rank=0, size=1), 126, tier, str(tmp_path), dict(stores=0, files=0))
    assert got["logits"] <= TOL and got["last"] <= TOL and got["riders"] <= TOL, got
    assert got["generated_equal"] and all(got["scores_equal"]) and got["left"] == [], got
    # Kept for decoding, the chunked-local layers (0-2) hold only the prompt's last chunk [64, 126).
    done = prefill(model, list(range(1, 127)), keep_kv=True, settings=_settings(tier, str(tmp_path)),
                   ring=World(rank=0, size=1))
    assert [len(kv.store) for kv in done.kv] == [62, 62, 62, 126]
    assert [kv.ranges for kv in done.kv] == [[(64, 126)]] * 3 + [[(0, 126)]]
    for kv in done.kv:
        kv.close()
    assert os.listdir(tmp_path) == []


def test_bad_tiers_are_refused_before_any_work(models):
    from ctxprobe.errors import UserError
    from ctxprobe.runner import Settings, load_model, prefill
    from ctxprobe.runner.distributed import World

    model = load_model(models["llama"])
    for ring in (World(0, 1), None):     # checked once, for either K/V strategy
        with pytest.raises(UserError, match="offload"):
            prefill(model, [1, 2, 3], settings=Settings(kv_tiers="disk"), ring=ring)
        with pytest.raises(UserError, match="layer 1"):
            prefill(model, [1, 2, 3], settings=Settings(kv_tiers=["host", "gpu"]), ring=ring)
        with pytest.raises(UserError, match="for 3 layers but the model has 2"):
            prefill(model, [1, 2, 3], settings=Settings(kv_tiers=["host"] * 3), ring=ring)
