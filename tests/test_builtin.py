"""The built-in model does what docs/builtin.md says, and ctxprobe measures it so."""

import pytest
import torch
from safetensors.torch import load_file

from ctxprobe.builtin import construct
from ctxprobe.cli import main
from ctxprobe.demo import DESIGNED_LIMIT, expected_effective_length, run_demo
from ctxprobe.store import Store

SHIPPED = construct.__file__.replace("construct.py", "model")


def test_shipped_weights_are_what_the_script_builds(tmp_path):
    construct.write(tmp_path)
    built, shipped = load_file(tmp_path / "model.safetensors"), load_file(f"{SHIPPED}/model.safetensors")
    assert built.keys() == shipped.keys()
    for key in built:
        assert torch.equal(built[key], shipped[key]), key
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / name).read_text() == open(f"{SHIPPED}/{name}").read(), name


def test_designed_limit_matches_the_constants():
    # docs/builtin.md: exp(B) word starts at 0.1459 per token
    assert construct.cliff_length(0.1459) == pytest.approx(DESIGNED_LIMIT, rel=0.01)
    assert construct.first_digit_weight(0.1459 * 4096) > 0.5 > construct.first_digit_weight(0.1459 * 8192)


def test_greedy_exact_within_its_limit_and_the_measured_effective_length(tmp_path):
    lengths = "1k,2k,4k,8k"
    r = run_demo(tmp_path, lengths=lengths, depths="0,25,50,75,100", samples=2, progress=False)
    with Store(r.db, readonly=True) as store:
        cells = store.cells(store.get_run(r.run_name).id)
    within = [c for c in cells if c["length"] < DESIGNED_LIMIT]
    beyond = [c for c in cells if c["length"] > DESIGNED_LIMIT]
    assert len(within) == 30 and len(beyond) == 10
    assert sum(c["exact"] for c in within) / len(within) >= 0.95
    assert sum(c["exact"] for c in beyond) / len(beyond) <= 0.05
    # documented: 4K on a x2 grid; "within one grid step" holds with room to spare
    assert r.effective_length == expected_effective_length([1024, 2048, 4096, 8192]) == 4096


def test_demo_command_writes_store_heatmap_and_report(runner, tmp_path):
    result = runner.invoke(main, ["demo", "--out", str(tmp_path), "--lengths", "1k,8k", "--depths", "0,100",
                                  "--samples", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "effective length (score >= 85%): 1K" in result.output
    assert "(as designed)" in result.output
    for name in ("ctxprobe.db", "demo-heatmap.png", "demo-report.html"):
        assert (tmp_path / name).stat().st_size > 1000, name
    # a rerun resumes: nothing left to do
    again = runner.invoke(main, ["demo", "--out", str(tmp_path), "--lengths", "1k,8k", "--depths", "0,100",
                                 "--samples", "1", "--quiet"])
    assert again.exit_code == 0 and "0 cell(s) run" in again.output


def test_demo_over_a_demo_run_of_other_settings_says_what_to_do(runner, tmp_path):
    # The demo has no --name, so the store's "pass another --name" left the user stuck.
    with Store(tmp_path / "ctxprobe.db") as store:
        store.create_run(name="demo-builtin", model_spec="builtin", model_fingerprint="older",
                         backend={}, tokenizer_fingerprint="t", version="0.0", command="c")
    result = runner.invoke(main, ["demo", "--out", str(tmp_path), "--lengths", "1k", "--depths", "0",
                                  "--samples", "1", "--quiet"])
    assert result.exit_code == 2 and "--out" in result.output and "--name" not in result.output, result.output
