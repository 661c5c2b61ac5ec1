"""The runner and `ctxprobe run` under torchrun (gloo on CPU): a prompt sharded over 2 ranks gives
the one-process logits, scores and generations; an end-to-end torchrun sweep stores the same rows
as a one-process sweep, each cell once, and resumes; a user error on rank 0 stops every rank
with exit code 2.

The one-process runner (ctxprobe.runner.loop, itself tested against transformers) is the
oracle. One spawned 2-rank world runs every in-process case and reports numbers that the tests
below assert on.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from ctxprobe.cli import main
from ctxprobe.store import Store
from ctxprobe.store.migrations import LATEST
from processes import free_port

TOL = 1e-5
WORLD = 2
# Llama 4 tiny: attention chunk 64, so 300 tokens on 2 ranks shard aligned to the chunk
# (chunked layers stay on their rank) and 100 tokens shard unaligned (their KV crosses ranks).
LENGTHS = {"llama4": (300, 100, 3), "llama": (97, 2)}
BRANCHES = [([5, 6, 7], [8, 9, 10]), ([], [11, 12]), ([13], [14])]


def _compare(model, world, seq_len: int) -> dict:
    """Sharded against one-process: prefill logits (all positions, riders), score, generate."""
    from ctxprobe.runner import generate, prefill, score

    g = torch.Generator().manual_seed(seq_len)
    ids = torch.randint(0, model.config.vocab_size, (seq_len,), generator=g).tolist()
    riders = [q + a[:-1] for q, a in BRANCHES if q + a[:-1]]
    one = prefill(model, ids, all_logits=True, riders=riders)
    one_scores = score(model, ids, BRANCHES)
    one_tokens = generate(model, ids, 5)
    import ctxprobe.runner.context.ring as ring

    ring_tokens, real_ring_attend = [], ring.ring_attend

    def counting_ring_attend(q, k, v, **kwargs):    # proof that the runner took the sharded path
        ring_tokens.append(q.shape[2])
        return real_ring_attend(q, k, v, **kwargs)

    ring.ring_attend = counting_ring_attend
    try:
        many = prefill(model, ids, all_logits=True, riders=riders, ring=world)
        first_pass_tokens = ring_tokens[:len(model.blocks)]
        many_last = prefill(model, ids, riders=riders, ring=world).last_logits
        many_scores = score(model, ids, BRANCHES, ring=world)
        many_tokens = generate(model, ids, 5, ring=world)
    finally:
        ring.ring_attend = real_ring_attend
    return dict(
        shard_tokens=sorted(set(first_pass_tokens)),   # one value: every layer ran on this rank's shard
        logits=float((many.logits - one.logits).abs().max()),
        last=float((many_last - one.last_logits).abs().max()),
        riders=max(float((a - b).abs().max()) for a, b in zip(many.rider_logits, one.rider_logits)),
        scores_equal=[(s.exact, s.first_rank, s.greedy) == (o.exact, o.first_rank, o.greedy)
                      for s, o in zip(many_scores, one_scores)],
        logprob=max(abs(s.logprob - o.logprob) for s, o in zip(many_scores, one_scores)),
        generated_equal=many_tokens == one_tokens,
        logits_bits=many.logits.sum().item())   # equal on every rank: each rank returns the same result


def _worker(rank: int, port: int, out_dir: str, models: dict, builtin_db: str) -> None:
    from click.testing import CliRunner

    from ctxprobe.runner import load_model
    from ctxprobe.runner import distributed

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    world = distributed.init_from_env()     # the cases pass it on: ring=world
    results = {"world": [world.rank, world.size]}
    try:
        for family, path in models.items():
            model = load_model(path)
            for seq_len in LENGTHS[family]:
                results[f"{family}-{seq_len}"] = _compare(model, world, seq_len)
        # A user error seen by rank 0 alone (its --db is from a newer ctxprobe) stops both ranks with exit 2.
        bad = CliRunner().invoke(main, ["run", "--model", "builtin", "--probe", "niah", "--lengths", "400",
                                        "--db", builtin_db if rank == 0 else os.path.join(out_dir, "ok.db"),
                                        "--quiet"])
        results["bad_db"] = dict(code=bad.exit_code, output=bad.output)
        results["opened_db_on_rank_1"] = os.path.exists(os.path.join(out_dir, "ok.db"))
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
        world.close()
        # Skip the C++ teardown at interpreter exit, where gloo sometimes aborts (see
        # processes.finish_rank); every result is written by now. A failure still exits 1.
        failed = sys.exc_info()[1] is not None
        if failed:
            import traceback

            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1 if failed else 0)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    from tiny_models import save_tiny

    return {family: str(save_tiny(tmp_path_factory.mktemp(family), family)[0]) for family in LENGTHS}


@pytest.fixture(scope="module")
def world_results(tmp_path_factory, models):
    out_dir = tmp_path_factory.mktemp("dist")
    newer_db = str(out_dir / "newer.db")
    Store(newer_db).close()
    with sqlite3.connect(newer_db) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 'future', 'now')", (LATEST + 1,))
    mp.spawn(_worker, args=(free_port(), str(out_dir), models, newer_db), nprocs=WORLD, join=True)
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", [f"{f}-{n}" for f, lengths in LENGTHS.items() for n in lengths])
def test_sharded_runner_equals_one_process(world_results, case):
    for rank, results in enumerate(world_results):
        assert results["world"] == [rank, WORLD]
        got = results[case]
        assert got["logits"] <= TOL and got["last"] <= TOL and got["riders"] <= TOL, (rank, got)
        assert all(got["scores_equal"]), (rank, got)
        assert got["logprob"] <= 1e-4, (rank, got)
        assert got["generated_equal"], (rank, got)
    assert len({r[case]["logits_bits"] for r in world_results}) == 1
    seq_len = int(case.split("-")[1])
    shards = [r[case]["shard_tokens"] for r in world_results]
    assert all(len(s) == 1 for s in shards) and sum(s[0] for s in shards) == seq_len, shards


@pytest.mark.parametrize("family", list(LENGTHS))
def test_the_sharded_path_in_a_world_of_one_equals_the_runner(models, family):
    """The sharded code without a process group (ring_attend is attend): every step but the
    collectives, in this process."""
    from ctxprobe.runner import load_model
    from ctxprobe.runner.distributed import World

    model = load_model(models[family])
    for seq_len in LENGTHS[family]:
        got = _compare(model, World(rank=0, size=1), seq_len)
        assert got["shard_tokens"] == [seq_len]
        assert got["logits"] <= TOL and got["last"] <= TOL and got["riders"] <= TOL, got
        assert all(got["scores_equal"]) and got["logprob"] <= 1e-4 and got["generated_equal"], got


@pytest.mark.timeout(120)
def test_user_error_on_rank_0_stops_every_rank_with_exit_2(world_results):
    zero, one = (r["bad_db"] for r in world_results)
    assert zero["code"] == 2 and one["code"] == 2, (zero, one)
    assert "newer ctxprobe" in zero["output"], zero["output"]
    assert one["output"].startswith("error: rank 0 stopped:") and "newer ctxprobe" in one["output"], one["output"]
    assert not world_results[1]["opened_db_on_rank_1"]     # only rank 0 opens the store


# --- end to end through torchrun -------------------------------------------------------------

RUN = ["run", "--model", "builtin", "--probe", "niah,kv", "--lengths", "400,700", "--depths", "0,50,100",
       "--quiet"]


def _torchrun(db) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD),
               "--master-port", str(free_port()), "-m", "ctxprobe", *RUN, "--db", str(db)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=150)


def _rows(db):
    with Store(db) as store:
        [run] = store.runs()
        return run, store.cells(run.id)


@pytest.mark.timeout(240)
def test_torchrun_sweep_stores_the_one_process_rows_once_and_resumes(runner, tmp_path):
    first = _torchrun(tmp_path / "ring.db")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "12 cell(s) done now" in first.stdout and "on 2 ranks" in first.stdout
    assert first.stdout.count("score (%) by depth") == 2       # only rank 0 prints the tables
    single = runner.invoke(main, [*RUN, "--db", str(tmp_path / "one.db")])
    assert single.exit_code == 0, single.output
    (ring_run, ring), (one_run, one) = _rows(tmp_path / "ring.db"), _rows(tmp_path / "one.db")
    assert ring_run.backend["ranks"] == 2 and "ranks" not in one_run.backend
    assert ring_run.name == one_run.name   # same model and settings: either run resumes the other
    key = lambda c: (c["family"], c["length"], c["depth"], c["sample"])    # noqa: E731
    assert len({key(c) for c in ring}) == len(ring) == 12
    one_by_key = {key(c): c for c in one}
    for cell in ring:
        want = one_by_key[key(cell)]
        # logprob: the sharded pass merges attention in another order, so equal to float rounding
        assert cell["logprob"] == pytest.approx(want["logprob"], rel=1e-5)
        assert {k: v for k, v in cell.items() if k not in ("latency", "logprob")} == \
               {k: v for k, v in want.items() if k not in ("latency", "logprob")}
    again = _torchrun(tmp_path / "ring.db")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 cell(s) done now" in again.stdout and "12 already stored" in again.stdout
    assert len(_rows(tmp_path / "ring.db")[1]) == 12


# --- without torchrun ------------------------------------------------------------------------

def test_one_process_or_a_world_of_one_starts_no_process_group(monkeypatch):
    import torch.distributed as dist

    from ctxprobe.errors import UserError
    from ctxprobe.runner import distributed

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.init_from_env() is None
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_env() is None          # torchrun --nproc-per-node 1
    assert not dist.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UserError, match="torchrun"):
        distributed.init_from_env()


def test_shards_align_to_the_local_chunk_only_when_every_piece_holds_one():
    from ctxprobe.attention.shard import chunk_align

    llama4 = [64, 64, None]    # each layer's attention chunk (None: global)
    assert chunk_align(llama4, 256, 2) == 64 and chunk_align(llama4, 255, 2) == 1
    assert chunk_align(llama4, 1 << 20, 8) == 64
    assert chunk_align([None, None], 1 << 20, 8) == 1       # a window layer has no chunk to align to
