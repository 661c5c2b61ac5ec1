"""NaN or inf logits are never a result: a checkpoint whose weights are poisoned (written by
transformers' save_pretrained, then one tensor overwritten with inf or NaN) runs through
`ctxprobe run`, and every cell is stored errored with the stage that went bad, never scored 0."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_llama import write_checkpoint

from ctxprobe.cli import main
from ctxprobe.store import Store

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("clean"))


def poisoned(clean, root, key, value):
    """A copy of the checkpoint with tensor `key` filled with `value` (inf or nan)."""
    path = root / "poisoned"
    shutil.copytree(clean, path)
    [weights] = path.glob("*.safetensors")
    tensors = load_file(str(weights))
    tensors[key] = torch.full_like(tensors[key], value)
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return path


def run_cells(runner, model, db):
    result = runner.invoke(main, ["run", "--model", str(model), "--probe", "niah,kv", "--lengths", "256",
                                  "--depths", "0,100", "--db", str(db), "--quiet"])
    # 0, or the exit status for a run whose cells mostly errored; never bad input or a crash.
    assert result.exit_code in (0, 3), result.output
    assert "Traceback" not in result.output
    with Store(db, readonly=True) as store:
        [run] = store.runs()
        return store.cells(run.id)


@pytest.mark.parametrize("key, value, where", [
    ("model.layers.1.mlp.down_proj.weight", float("inf"), "layer 1"),
    ("model.layers.0.self_attn.q_proj.weight", float("nan"), "layer 0"),
    ("model.embed_tokens.weight", float("nan"), "the token embeddings"),
    ("model.norm.weight", float("inf"), "the final norm or output head"),
])
def test_poisoned_weights_error_the_cell_and_name_the_stage(clean, runner, tmp_path, key, value, where):
    cells = run_cells(runner, poisoned(clean, tmp_path, key, value), tmp_path / "r.db")
    assert len(cells) == 4
    for c in cells:
        assert c["error"] is not None and f"non-finite logits in {where}" in c["error"], c["error"]
        assert c["score"] is None and c["exact"] is None and c["logprob"] is None and c["first_rank"] is None


def test_the_clean_checkpoint_scores_every_cell(clean, runner, tmp_path):
    cells = run_cells(runner, clean, tmp_path / "r.db")
    assert len(cells) == 4 and all(c["error"] is None and c["score"] is not None for c in cells)


def test_free_generation_refuses_non_finite_logits_too(clean, tmp_path):
    from ctxprobe.runner import generate, load_model, score
    from ctxprobe.runner.loop import NonFiniteLogits

    model = load_model(poisoned(clean, tmp_path, "model.layers.1.mlp.down_proj.weight", float("inf")),
                       device="cpu", dtype="float32")
    with pytest.raises(NonFiniteLogits, match="non-finite logits in layer 1"):
        generate(model, list(range(5, 40)), max_new_tokens=3)
    with pytest.raises(NonFiniteLogits, match="non-finite logits in layer 1"):
        score(model, list(range(5, 40)), [([7, 8], [9, 10])])
