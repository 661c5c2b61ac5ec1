"""Small first-hour frictions (issue 19 item 8): merge leaves no file on failure, compare names a
missing baseline file, --tokenizer builtin, help that shows what --model and --lengths take, the
tensor layout beside shard/ring_attend in the README, demo outputs ignored by git."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import ctxprobe
from ctxprobe.cli import main

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = Path(ctxprobe.__file__).parent / "builtin" / "model"


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_failed_merge_leaves_no_output_file(runner, tmp_path):
    out = tmp_path / "all.db"
    one_line_error(runner.invoke(main, ["merge", str(out), str(tmp_path / "missing.db")]), "missing.db")
    (tmp_path / "notes.db").write_text("not a database")
    one_line_error(runner.invoke(main, ["merge", str(out), str(tmp_path / "notes.db")]), "notes.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


def test_a_failed_merge_into_an_existing_database_keeps_it(runner, tmp_path):
    db = tmp_path / "r.db"
    made = runner.invoke(main, ["run", "--model", "builtin", "--probe", "niah", "--lengths", "512",
                                "--db", str(db), "--quiet"])
    assert made.exit_code == 0, made.output
    one_line_error(runner.invoke(main, ["merge", str(db), str(tmp_path / "missing.db")]), "missing.db")
    assert "1 " in runner.invoke(main, ["runs", "--db", str(db)]).stdout.splitlines()[1]


def test_compare_with_a_missing_baseline_file_says_the_file_is_missing(runner, tmp_path):
    missing = tmp_path / "base.json"
    for db in (tmp_path / "none.db", tmp_path / "r.db"):
        result = runner.invoke(main, ["compare", str(missing), "candidate", "--db", str(db)])
        one_line_error(result, f"baseline file {missing} does not exist", "ctxprobe baseline RUN -o")
    result = runner.invoke(main, ["compare", "base.json", "candidate", "--db", str(tmp_path / "r.db")])
    one_line_error(result, "baseline file base.json does not exist")


def test_tokenizer_builtin_is_the_built_in_models(runner, tmp_path):
    args = ["probes", "export", "niah", "--lengths", "1k", "--depths", "50", "-o", "-"]
    by_name = runner.invoke(main, [*args, "--tokenizer", "builtin"])
    by_path = runner.invoke(main, [*args, "--tokenizer", str(MODEL_DIR)])
    assert by_name.exit_code == 0, by_name.output
    [named], [pathed] = ([json.loads(line) for line in r.stdout.splitlines()] for r in (by_name, by_path))
    assert named["hash"] == pathed["hash"] and named["prompt"] == pathed["prompt"]
    shown = runner.invoke(main, ["probes", "show", "niah", "--length", "1k", "--tokenizer", "builtin"])
    assert shown.exit_code == 0 and "tokens 1,024" in shown.output


def test_tokenizer_builtin_counts_for_a_server(runner, tmp_path, monkeypatch):
    from fake_openai import FakeOpenAI

    from ctxprobe.store import Store
    from ctxprobe.probes import load_tokenizer

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI({}, tokenize=None) as fake:           # no /tokenize: --tokenizer counts
        result = runner.invoke(main, ["run", "--model", f"openai:{fake.url}", "--served-model", "m",
                                      "--probe", "niah", "--lengths", "1k", "--tokenizer", "builtin",
                                      "--db", str(tmp_path / "r.db"), "--quiet"])
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "r.db", readonly=True) as store:
        [run] = store.runs()
    assert run.tokenizer_fingerprint == load_tokenizer(str(MODEL_DIR)).fingerprint


def test_help_says_what_model_lengths_and_depths_take(runner):
    text = " ".join(runner.invoke(main, ["run", "--help"]).output.split())
    assert "builtin (the built-in model" in text
    assert "1k..128k:x2" in text and "0..100:11" in text


def test_readme_states_the_tensor_layout_of_shard_and_ring_attend():
    readme = (ROOT / "README.md").read_text()
    ring = readme[readme.index("## Ring attention across processes"):]
    ring = ring[:ring.index("ring_attend(q, k, v")]
    assert "`[B, H, T, D]`" in ring and "q_full [B, Hq, T, D]" in ring


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_demo_outputs_are_ignored_by_git():
    names = ["ctxprobe.db", "demo-heatmap.png", "demo-report.html", "out/demo-report.html"]
    ignored = subprocess.run(["git", "check-ignore", *names], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == names
    kept = subprocess.run(["git", "check-ignore", "docs/demo-heatmap.png"], cwd=ROOT, capture_output=True)
    assert kept.returncode == 1                        # the README's image stays tracked
