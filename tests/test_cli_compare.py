"""`ctxprobe compare` exit codes (0 no regression, 1 regression, 2 bad input) and baselines."""

import json

import matplotlib.image
import pytest

from ctxprobe.cli import main
from ctxprobe.store import Store

LENGTHS = (1024, 2048, 4096)


def add_run(store, name, *, broken_length=None, seed=0):
    """12 cells per length; every answer right, except all of `broken_length` wrong."""
    run = store.create_run(name=name, model_spec="tiny", model_fingerprint="fp", backend={},
                           tokenizer_fingerprint="tok", version="0.1.0", command="ctxprobe run")
    for length in LENGTHS:
        for depth in (0.0, 50.0, 100.0):
            for sample in range(4):
                ok = length != broken_length
                store.put_cell(run.id, dict(
                    family="niah", length=length, depth=depth, sample=sample, seed=seed,
                    probe_hash=f"{length}-{depth}-{sample}", score=float(ok), exact=ok,
                    logprob=-0.2 if ok else -4.0, response="42"))


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("compare") / "c.db"
    with Store(path) as store:
        add_run(store, "a")
        add_run(store, "same")
        add_run(store, "worse", broken_length=4096)
        add_run(store, "other-seed", seed=1)
    return str(path)


def test_identical_runs_exit_0(db, tmp_path, runner):
    result = runner.invoke(main, ["compare", "a", "same", "--db", db])
    assert result.exit_code == 0, result.output
    assert "no regression" in result.output and "REGRESSED" not in result.output


def test_regression_exits_1_and_names_the_length(db, tmp_path, runner):
    plot = tmp_path / "delta.png"
    result = runner.invoke(main, ["compare", "a", "worse", "--db", db, "-o", str(plot)])
    assert result.exit_code == 1, result.output
    assert "REGRESSION at niah@4K" in result.output
    rows = [line for line in result.output.splitlines() if line.startswith("niah")]
    assert [r.split()[1] for r in rows if "REGRESSED" in r] == ["4K"]
    assert matplotlib.image.imread(plot).ndim == 3
    # The other direction is an improvement, not a regression; a big --min-drop hides it too.
    assert runner.invoke(main, ["compare", "worse", "a", "--db", db]).exit_code == 0
    assert runner.invoke(main, ["compare", "a", "worse", "--db", db, "--min-drop", "1.0"]).exit_code == 0
    logprob = runner.invoke(main, ["compare", "a", "worse", "--db", db, "--metric", "logprob"])
    assert logprob.exit_code == 1 and "bootstrap" in logprob.output


def test_bad_input_exits_2(db, tmp_path, runner):
    for args, message in (
            (["compare", "a", "nope", "--db", db], "no run named 'nope'"),
            (["compare", "a", "same", "--db", db, "--alpha", "2"], "--alpha"),
            (["compare", "a", "other-seed", "--db", db], "share no cells"),
            (["compare", "a", "same", "--db", str(tmp_path / "missing.db")], "no results database"),
            (["baseline", "nope", "--db", db, "-o", str(tmp_path / "b.json")], "no run named")):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    result = runner.invoke(main, ["compare", str(garbage), "a", "--db", db])
    assert result.exit_code == 2 and "cannot read baseline file" in result.output
    garbage.write_text(json.dumps({"format": "something-else"}))
    result = runner.invoke(main, ["compare", str(garbage), "a", "--db", db])
    assert result.exit_code == 2 and "not a ctxprobe baseline file" in result.output


def test_baseline_round_trip(db, tmp_path, runner):
    base = tmp_path / "base.json"
    result = runner.invoke(main, ["baseline", "a", "--db", db, "-o", str(base)])
    assert result.exit_code == 0, result.output
    record = json.loads(base.read_text())
    with Store(db, readonly=True) as store:
        assert record["cells"] == store.cells(store.get_run("a").id)
    assert record["run"]["name"] == "a" and record["run"]["model_fingerprint"] == "fp"
    # The baseline stands in for run a, in either position; no database needed for two files.
    direct = runner.invoke(main, ["compare", "a", "worse", "--db", db])
    via_file = runner.invoke(main, ["compare", str(base), "worse", "--db", db])
    assert via_file.exit_code == direct.exit_code == 1
    assert via_file.output.splitlines()[2:] == direct.output.splitlines()[2:]
    assert runner.invoke(main, ["compare", str(base), "same", "--db", db]).exit_code == 0
    both = runner.invoke(main, ["compare", str(base), str(base), "--db", str(tmp_path / "none.db")])
    assert both.exit_code == 0, both.output


def test_end_to_end_with_real_runs_over_http(tmp_path, runner):
    """Two `ctxprobe run` sweeps against the fake server; the second one stops answering at 1K."""
    from fake_openai import FakeOpenAI, answers_for

    from ctxprobe.probes import load_tokenizer

    grid = dict(families=["niah"], lengths=[512, 1024], depths=[0, 50, 100], samples=4)
    answers = answers_for(**grid)
    tok = load_tokenizer(None)
    short_only = {p: a for p, a in answers.items() if len(tok.encode(p)) != 1024}
    db = str(tmp_path / "e2e.db")
    args = ["--probe", "niah", "--lengths", "512,1024", "--depths", "0,50,100", "--samples", "4",
            "--quiet", "--db", db, "--served-model", "fake-model"]
    for name, table in (("good", answers), ("bad", short_only)):
        with FakeOpenAI(table, unknown_answer="<script>x</script> no idea") as fake:
            result = runner.invoke(main, ["run", "--model", "openai:" + fake.url, "--name", name, *args])
            assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["compare", "good", "bad", "--db", db])
    assert result.exit_code == 1 and "REGRESSION at niah@1K" in result.output, result.output
    out = tmp_path / "bad.html"
    assert runner.invoke(main, ["report", "bad", "--db", db, "-o", str(out)]).exit_code == 0
    page = out.read_text()
    assert "&lt;script&gt;x&lt;/script&gt; no idea" in page and "<script" not in page


@pytest.mark.parametrize("command", ["report", "compare", "baseline", "history"])
def test_help_ends_with_an_example(runner, command):
    assert main.commands[command].help.strip().splitlines()[-1].strip().startswith(f"Example: ctxprobe {command} ")
    assert runner.invoke(main, [command, "--help"]).exit_code == 0
