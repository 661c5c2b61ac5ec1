"""`ctxprobe compare` as a CI gate: a (family, length) that A has results for and B has none
for (no cell at all, or every cell errored) fails the gate with exit 1 and a MISSING row in the
table, instead of a footnote and exit 0."""

import pytest

from ctxprobe.cli import main
from ctxprobe.store import Store

LENGTHS = (1024, 2048, 4096)


def add_run(store, name, *, lengths=LENGTHS, errored=(), seed=0, family="niah"):
    """12 cells per length, every answer right; cells at `errored` lengths stored as errors."""
    run = store.create_run(name=name, model_spec="tiny", model_fingerprint="fp", backend={},
                           tokenizer_fingerprint="tok", version="0.1.0", command="ctxprobe run")
    for length in lengths:
        for depth in (0.0, 50.0, 100.0):
            for sample in range(4):
                cell = dict(family=family, length=length, depth=depth, sample=sample, seed=seed,
                            probe_hash=f"{family}-{length}-{depth}-{sample}", response="42")
                if length in errored:
                    cell.update(error="HTTP 500 from the server", score=None)
                else:
                    cell.update(score=1.0, exact=True, logprob=-0.2)
                store.put_cell(run.id, cell)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("gate") / "g.db"
    with Store(path) as store:
        add_run(store, "a")
        add_run(store, "same")
        add_run(store, "no-4k", lengths=(1024, 2048))
        add_run(store, "4k-errored", errored=(4096,))
        add_run(store, "all-errored", errored=LENGTHS)
        add_run(store, "more", lengths=LENGTHS + (8192,))
        add_run(store, "other-seed", seed=1)
        add_run(store, "kv-only", family="kv")
    return str(path)


def verdicts(output):
    """{(family, length label): verdict column} from compare's table."""
    rows = [line.split(None, 9) for line in output.splitlines() if line.startswith(("niah", "kv "))]
    return {(r[0], r[1]): r[9] for r in rows if len(r) == 10}


def test_a_length_missing_in_b_fails_the_gate(db, runner):
    result = runner.invoke(main, ["compare", "a", "no-4k", "--db", db])
    assert result.exit_code == 1, result.output
    table = verdicts(result.output)
    assert table[("niah", "4K")] == "MISSING: no cell in B"
    assert table[("niah", "1K")] == table[("niah", "2K")] == "ok"
    assert "MISSING in B at niah@4K (no cell in B)" in result.output
    assert "no regression" not in result.output


def test_a_length_where_every_cell_of_b_errored_fails_the_gate(db, runner):
    result = runner.invoke(main, ["compare", "a", "4k-errored", "--db", db])
    assert result.exit_code == 1, result.output
    assert verdicts(result.output)[("niah", "4K")] == "MISSING: all 12 errored in B"
    assert "MISSING in B at niah@4K (all 12 errored in B)" in result.output


def test_b_with_every_cell_errored_fails_the_gate_not_bad_input(db, runner):
    result = runner.invoke(main, ["compare", "a", "all-errored", "--db", db])
    assert result.exit_code == 1, result.output
    table = verdicts(result.output)
    assert [table[("niah", x)] for x in ("1K", "2K", "4K")] == ["MISSING: all 12 errored in B"] * 3


def test_a_baseline_file_gates_a_run_missing_a_length(db, runner, tmp_path):
    base = tmp_path / "base.json"
    assert runner.invoke(main, ["baseline", "a", "--db", db, "-o", str(base)]).exit_code == 0
    result = runner.invoke(main, ["compare", str(base), "no-4k", "--db", db])
    assert result.exit_code == 1 and "MISSING in B at niah@4K" in result.output, result.output
    result = runner.invoke(main, ["compare", str(base), "kv-only", "--db", db])
    assert result.exit_code == 1, result.output   # B measured another family: A's are all missing
    assert set(verdicts(result.output).values()) == {"MISSING: no cell in B"}


def test_what_still_passes_and_what_is_still_bad_input(db, runner):
    # B covering more than A, or the same, passes; A missing what B has is not B's failure.
    for b in ("same", "more"):
        result = runner.invoke(main, ["compare", "a", b, "--db", db])
        assert result.exit_code == 0 and "no regression" in result.output, result.output
    assert runner.invoke(main, ["compare", "no-4k", "a", "--db", db]).exit_code == 0
    # Runs made with another seed share no probe at all: a setup mistake, exit 2 as before.
    result = runner.invoke(main, ["compare", "a", "other-seed", "--db", db])
    assert result.exit_code == 2 and "share no cells" in result.output, result.output


def test_help_says_missing_cells_fail_the_gate(runner):
    text = " ".join(runner.invoke(main, ["compare", "--help"]).output.split())
    assert "Exits 1 when the gate fails" in text and "every cell errored" in text and "MISSING" in text
