"""The sweep planner: canonical cells, disjoint shards that cover the grid, resume skipping,
work batches and context groups."""

import re
from types import SimpleNamespace

import pytest

from ctxprobe.errors import UserError
from ctxprobe.sweep.cells import (Cell, group_by_context, parse_shard, pending, plan_cells, shard,
                              work_order)


def test_cells_are_canonical_and_deduplicated():
    cells = plan_cells(["kv", "niah", "kv"], [2048, 1024, 1024], [100, 0], 2)
    assert len(cells) == 2 * 2 * 2 * 2
    assert cells[0] == Cell("kv", 1024, 0.0, 0) and cells[-1] == Cell("niah", 2048, 100.0, 1)
    assert cells == plan_cells(["kv", "niah"], [1024, 2048], [0, 100], 2)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_shards_are_disjoint_balanced_and_cover_the_grid(n):
    cells = plan_cells(["a", "b"], [1, 2, 3], [0, 50, 100], 3)
    parts = [shard(cells, i, n) for i in range(n)]
    flat = [c for p in parts for c in p]
    assert sorted(flat) == sorted(cells) and len(set(flat)) == len(cells)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts == [shard(cells, i, n) for i in range(n)]  # deterministic


def test_parse_shard():
    assert parse_shard(None) == (0, 1) and parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(UserError, match="bad --shard"):
            parse_shard(bad)


def test_pending_skips_stored_keys_and_bad_grids_are_refused():
    cells = plan_cells(["a"], [1], [0, 100], 1)
    assert pending(cells, {("a", 1, 0.0, 0)}) == [Cell("a", 1, 100.0, 0)]
    with pytest.raises(UserError):
        plan_cells([], [1], [0], 1)
    with pytest.raises(UserError):
        plan_cells(["a"], [1], [0], 0)


def test_work_goes_sample_by_sample_shortest_first():
    batches = work_order(plan_cells(["a", "b"], [2, 1], [0, 100], 2))
    assert [(b[0].sample, b[0].length) for b in batches] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert all(len(b) == 4 for b in batches)


def test_probes_with_one_context_are_grouped():
    probes = [SimpleNamespace(context_ids=ids, name=i) for i, ids in
              enumerate([[1, 2], [1, 3], [1, 2], [4], [1, 3]])]
    groups = group_by_context(probes)
    assert [[p.name for p in g] for g in groups] == [[0, 2], [1, 4], [3]]


def test_summary_of_a_family_whose_every_cell_errored_gives_no_reading():
    # It used to read "below the shortest length tested", a verdict on the model drawn from no
    # data at all (every request failed).
    import warnings

    from ctxprobe.sweep import effective_length, summarize

    failed = [dict(family="niah", length=n, depth=50.0, sample=0, score=None, error="HTTP 400")
              for n in (512, 1024)]
    ok = [dict(family="kv", length=512, depth=50.0, sample=0, score=0.0, error=None)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice"
        text = summarize(failed + ok)
        assert effective_length(failed) is None
    assert "niah: effective length (score >= 85%): no reading" in text
    assert "kv: effective length (score >= 85%): below the shortest length tested (512)" in text


def test_grid_parse_reads_the_cli_spellings_into_the_grid_the_constructor_makes():
    from ctxprobe.sweep import Grid

    grid = Grid.parse("niah, multikey", "512..2k:x2", "0..100:3", samples=2, seed=7,
                      params=["multikey.value_kind=uuid", "distractors=2"], shard="1/2")
    assert grid == Grid(families=("niah", "multikey"), lengths=(512, 1024, 2048), depths=(0, 50, 100),
                        samples=2, seed=7, shard=(1, 2),
                        params={"multikey": {"value_kind": "uuid", "distractors": 2}})
    assert grid.cells() == shard(plan_cells(["niah", "multikey"], [512, 1024, 2048], [0, 50, 100], 2), 1, 2)
    # parsed values pass through; a typed mapping is checked and typed as the strings are
    assert Grid.parse(["niah"], [512], [0.0], params={"niah": {"near_misses": "2"}}) == \
        Grid(("niah",), (512,), (0.0,), params={"niah": {"near_misses": 2}})


@pytest.mark.parametrize("kwargs, message", [
    (dict(probes="niah,nope", lengths="1k"), "unknown probe family 'nope'"),
    (dict(probes="niah", lengths="1q"), "bad length '1q'"),
    (dict(probes="niah", lengths="1k", depths="120"), "outside 0 to 100"),
    (dict(probes="niah", lengths="1k", shard="2/2"), "bad --shard"),
    (dict(probes="niah", lengths="1k", params=["kv.x=1"]), "'kv' is not among the --probe families"),
    (dict(probes="niah", lengths="1k", seed=-1), "--seed -1 is out of range"),
])
def test_grid_parse_refuses_bad_input_by_name(kwargs, message):
    from ctxprobe.sweep import Grid

    with pytest.raises(UserError, match=re.escape(message)):
        Grid.parse(**kwargs)


def test_longest_pending_builds_its_samples_only_when_read_one_per_family_and_sample():
    from ctxprobe.probes import load_tokenizer
    from ctxprobe.sweep import Grid, longest_pending

    class Counting:
        def __init__(self):
            self.inner, self.calls = load_tokenizer(None), 0

        def __getattr__(self, name):
            self.calls += 1
            return getattr(self.inner, name)

    grid = Grid(families=("niah", "kv"), lengths=(600, 300, 900), depths=(0, 100), samples=2)
    tokenizer = Counting()
    assert longest_pending(grid, [], tokenizer) is None
    pending = [c for c in grid.cells() if c.length != 300]
    length, samples = longest_pending(grid, pending, tokenizer)
    assert length == 900 and tokenizer.calls == 0      # nothing built yet (a server reads none)
    probes = list(samples)
    assert tokenizer.calls > 0
    assert sorted((p.family, p.sample, len(p.token_array)) for p in probes) == [
        ("kv", 0, 600), ("kv", 1, 600), ("niah", 0, 600), ("niah", 1, 600)]
