"""`ctxprobe run --router-trace` end to end (issue 17's acceptance): a tiny Mixtral whose router
is built to change experts with position (tests/positional_mixtral.py: expert 0 until about
position 20, one of experts 1-3 after) is swept through the CLI; the stored traces show the change
in the right bucket, a resumed run keeps them, and `ctxprobe report` finds the change: in the data
behind its figure, in its words and in its table, with the figure in the HTML."""

import re
import sqlite3

import numpy as np
import pytest
from positional_mixtral import write_positional_mixtral
from tiny_llama import write_checkpoint

from ctxprobe.analysis import router
from ctxprobe.cli import main
from ctxprobe.router_trace import RouterTrace, bucket_end, bucket_start, n_buckets
from ctxprobe.store import Store

pytest.importorskip("transformers")
CHANGE = 5          # bucket 16-31 holds the flip; buckets 0-4 are all expert 0, 6 on experts 1-3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_positional_mixtral(tmp_path_factory.mktemp("positional-mixtral"))


def sweep(runner, checkpoint, db, lengths, *extra):
    result = runner.invoke(main, ["run", "--model", str(checkpoint), "--probe", "niah", "--lengths", lengths,
                                  "--depths", "0,100", "--db", str(db), "--quiet", "--router-trace",
                                  "--generate-failing", "0", *extra])
    assert result.exit_code == 0, result.output
    with Store(db, readonly=True) as store:
        [run] = store.runs()
        return run, store.cells(run.id), store.router_traces(run.id)


def assert_the_change_is_seen(trace: RouterTrace, prompt_tokens: int):
    """prompt_tokens: the cell's; the trace counts the prefilled context, which the question follows."""
    assert trace.layers == (0, 1) and trace.n_experts == 4
    length = int(trace.tokens_LB[0].sum())
    assert prompt_tokens / 2 < length < prompt_tokens and trace.n_buckets == n_buckets(length)
    B = trace.n_buckets
    assert trace.tokens_LB[1].tolist() == [1] + [bucket_end(b) - bucket_start(b) for b in range(1, B - 1)] + [
        length - bucket_start(B - 1)]
    top, entropy = trace.top_expert_LB(), trace.entropy_LB()
    for l in range(2):
        assert (top[l, :CHANGE] == 0).all() and (entropy[l, :CHANGE] == 0).all()
        assert (top[l, CHANGE + 1:] > 0).all() and (trace.load_LBE[l, CHANGE + 1:, 0] == 0).all()
        assert (entropy[l, CHANGE + 1:] > 1.2).all()           # spread over experts 1-3 (log2 3 = 1.58)
        # The router is sure far from the flip, unsure around it.
        assert trace.margin_LB[l, 2] > 0.9 and trace.margin_LB[l, CHANGE] < 0.3


def test_traces_show_the_change_and_a_resumed_run_keeps_them(runner, checkpoint, tmp_path):
    db = tmp_path / "r.db"
    run, cells, traces = sweep(runner, checkpoint, db, "256")
    assert run.backend["router_trace"] is True
    assert sorted(traces) == sorted((c["family"], c["length"], c["depth"], c["sample"]) for c in cells)
    first = {k: (t.load_LBE.copy(), t.margin_LB.copy()) for k, t in traces.items()}
    for c in cells:
        assert_the_change_is_seen(traces[(c["family"], c["length"], c["depth"], c["sample"])], c["prompt_tokens"])

    run2, cells2, traces2 = sweep(runner, checkpoint, db, "256,384")     # resumes: 2 new cells
    assert run2.id == run.id and len(cells2) == 4 and len(traces2) == 4
    for key, (load, margin) in first.items():
        assert np.array_equal(traces2[key].load_LBE, load) and np.array_equal(traces2[key].margin_LB, margin)
    for c in cells2:
        assert_the_change_is_seen(traces2[(c["family"], c["length"], c["depth"], c["sample"])], c["prompt_tokens"])


def test_the_report_finds_the_change(runner, checkpoint, tmp_path):
    db = tmp_path / "r.db"
    run, cells, traces = sweep(runner, checkpoint, db, "256,320")
    reading = router.router_reading(cells, traces)
    assert reading.shift.bucket == CHANGE and reading.shift.distance > 0.5
    [(label, entropy, margin)] = router.series(reading)       # the data behind the figure
    assert label.startswith(router.WRONG) or label.startswith(router.CORRECT)
    assert np.allclose(entropy[:CHANGE], 0) and (entropy[CHANGE + 1:] > 1.2).all()
    assert (margin[:3] > 0.9).all() and (margin[CHANGE:] < 0.3).all()   # sure before, torn from the flip on

    out = tmp_path / "report.html"
    result = runner.invoke(main, ["report", run.name, "--db", str(db), "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    section = page[page.index('id="router"'):]
    assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]{2000,}" alt="MoE router', section)
    assert "between positions 8-15 and 16-31" in section
    rows = re.findall(r"<tr><td>([0-9-]+)</td>(.*?)</tr>", section)
    by_bucket = dict(rows)
    assert "L0: e0 100%" in by_bucket["8-15"] and "L1: e0 100%" in by_bucket["8-15"]
    assert "e0" not in by_bucket["32-63"]

    # Several runs on one page: a router section for each run that has traces.
    plain = runner.invoke(main, ["run", "--model", str(checkpoint), "--probe", "niah", "--lengths", "256",
                                 "--db", str(db), "--quiet", "--name", "untraced", "--generate-failing", "0"])
    assert plain.exit_code == 0, plain.output
    result = runner.invoke(main, ["report", run.name, "untraced", "--db", str(db), "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert f'id="router-{run.id}"' in page and page.count('<h2 id="router') == 1
    assert f"MoE router by position: {run.name}" in page and "between positions 8-15 and 16-31" in page

    # The run grows without --router-trace: its new cells are named as left out.
    grown = runner.invoke(main, ["run", "--model", str(checkpoint), "--probe", "niah", "--lengths", "256,320,384",
                                 "--depths", "0,100", "--db", str(db), "--quiet", "--name", run.name,
                                 "--generate-failing", "0"])
    assert grown.exit_code == 0, grown.output
    result = runner.invoke(main, ["report", run.name, "--db", str(db), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 of the 6 scored cells have no trace" in out.read_text()


def test_split_by_correct_answers():
    """Two groups pool apart: a cell that scored 1 goes to 'answered correctly'."""
    sure = RouterTrace((0,), [[[4, 0], [0, 4]]], [[4, 4]], [[0.9, 0.8]])
    torn = RouterTrace((0,), [[[2, 2], [2, 2]]], [[4, 4]], [[0.1, 0.2]])
    cells = [dict(family="niah", length=4, depth=0.0, sample=0, score=1.0),
             dict(family="niah", length=4, depth=100.0, sample=0, score=0.0),
             dict(family="niah", length=4, depth=50.0, sample=0, score=None)]     # errored: left out
    traces = {("niah", 4, 0.0, 0): sure, ("niah", 4, 100.0, 0): torn, ("niah", 4, 50.0, 0): sure}
    reading = router.router_reading(cells, traces)
    assert reading.cells == {router.CORRECT: 1, router.WRONG: 1}
    series = {label.split(" (")[0]: (h, m) for label, h, m in router.series(reading)}
    assert series[router.CORRECT][0].tolist() == [0.0, 0.0] and series[router.WRONG][0].tolist() == [1.0, 1.0]
    assert np.allclose(series[router.CORRECT][1], [0.9, 0.8]) and np.allclose(series[router.WRONG][1], [0.1, 0.2])


def test_store_round_trip_merge_and_an_old_database(tmp_path):
    trace = RouterTrace((0, 2), np.arange(24).reshape(2, 3, 4), [[1, 1, 2], [1, 1, 2]], [[0.5, 0.25, 0.125]] * 2)
    cell = dict(family="niah", length=4, depth=50.0, sample=0, seed=0, error=None)
    with Store(tmp_path / "a.db") as store:
        run = store.create_run(name="r", model_spec="m", model_fingerprint="f", backend={}, tokenizer_fingerprint="t",
                               version="0", command="c")
        assert store.put_cell(run.id, cell, router_trace=trace)
        # A finished cell is final: a second try and its trace are dropped.
        other = RouterTrace((0, 2), np.zeros((2, 3, 4)), [[1, 1, 2]] * 2, [[0.0] * 3] * 2)
        assert not store.put_cell(run.id, cell, router_trace=other)
        got = store.router_traces(run.id)[("niah", 4, 50.0, 0)]
    assert np.array_equal(got.load_LBE, trace.load_LBE) and got.layers == (0, 2)
    with Store(tmp_path / "b.db") as merged, Store(tmp_path / "a.db", readonly=True) as source:
        merged.merge_from(source)
        [run] = merged.runs()
        assert np.array_equal(merged.router_traces(run.id)[("niah", 4, 50.0, 0)].load_LBE, trace.load_LBE)
    # A database from before schema version 6, read without migrating: no traces, no error.
    from ctxprobe.store.migrations import migrate

    conn = sqlite3.connect(tmp_path / "old.db")
    migrate(conn, up_to=5)
    conn.execute("INSERT INTO runs (name, created, model_spec, model_fingerprint, backend, tokenizer_fingerprint, "
                 "version, command) VALUES ('old', 'now', 'm', 'f', '{}', 't', '0', 'c')")
    conn.commit()
    conn.close()
    with Store(tmp_path / "old.db", readonly=True) as old:
        assert old.router_traces(old.runs()[0].id) == {}


def test_a_damaged_trace_is_named(tmp_path):
    from ctxprobe.store.faults import StoreError

    trace = RouterTrace((0,), [[[1, 0]]], [[1]], [[0.5]])
    with Store(tmp_path / "a.db") as store:
        run = store.create_run(name="r", model_spec="m", model_fingerprint="f", backend={}, tokenizer_fingerprint="t",
                               version="0", command="c")
        store.put_cell(run.id, dict(family="niah", length=4, depth=0.0, sample=0, seed=0), router_trace=trace)
        store.conn.execute("UPDATE router_traces SET data = x'00ff'")
        store.conn.commit()
        with pytest.raises(StoreError, match="router trace of cell niah length 4 depth 0% sample 0 .* unreadable"):
            store.router_traces(run.id)


def test_refused_for_a_server_and_a_dense_model(runner, tmp_path):
    result = runner.invoke(main, ["run", "--model", "openai:http://127.0.0.1:9/v1", "--probe", "niah", "--lengths",
                                  "64", "--db", str(tmp_path / "r.db"), "--router-trace"])
    assert result.exit_code == 2 and "--router-trace" in result.output and "openai:" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r.db").exists()
    dense = write_checkpoint(tmp_path / "llama")
    result = runner.invoke(main, ["run", "--model", str(dense), "--probe", "niah", "--lengths", "64",
                                  "--db", str(tmp_path / "r.db"), "--router-trace"])
    assert result.exit_code == 2 and "dense llama model" in result.output and "drop --router-trace" in result.output
    assert "Traceback" not in result.output


@pytest.mark.timeout(300)
def test_torchrun_adds_the_ranks_shares_into_the_one_process_trace(runner, checkpoint, tmp_path):
    """Under torchrun each rank routes its shard of the prompt; the stored trace (rank 0 writes)
    is the sum, equal to a one-process run's."""
    import os
    import subprocess
    import sys

    from processes import free_port

    args = ["run", "--model", str(checkpoint), "--probe", "niah", "--lengths", "256", "--depths", "0,100",
            "--router-trace", "--generate-failing", "0", "--quiet"]
    ring = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(free_port()), "-m", "ctxprobe", *args, "--db", str(tmp_path / "ring.db")],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=240)
    assert ring.returncode == 0, ring.stderr[-3000:]
    assert "on 2 ranks" in ring.stdout
    one = runner.invoke(main, [*args, "--db", str(tmp_path / "one.db")])
    assert one.exit_code == 0, one.output
    with Store(tmp_path / "ring.db", readonly=True) as a, Store(tmp_path / "one.db", readonly=True) as b:
        [run_a], [run_b] = a.runs(), b.runs()
        assert run_a.backend["ranks"] == 2
        sharded, whole = a.router_traces(run_a.id), b.router_traces(run_b.id)
    assert sorted(sharded) == sorted(whole) and len(whole) == 2
    for key, want in whole.items():
        got = sharded[key]
        assert np.array_equal(got.tokens_LB, want.tokens_LB) and np.array_equal(got.load_LBE, want.load_LBE)
        assert np.allclose(got.margin_LB, want.margin_LB, atol=1e-5, equal_nan=True)
