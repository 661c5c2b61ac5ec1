"""The native backend end to end on CPU: a tiny random Llama checkpoint written here, two
families x 3 lengths x 3 depths into the store, and each cell's teacher-forced numbers held
against transformers' own forward pass on the same tokens (the slow reference)."""

import math

import pytest
import torch
from tiny_llama import TEMPLATE_TOKENS, write_checkpoint

from ctxprobe.backends.native import NativeBackend, answer_ids_after, checkpoint_fingerprint
from ctxprobe.cli import main
from ctxprobe.store import Store

LENGTHS, DEPTHS = [256, 288, 320], [0, 50, 100]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def hf_model(checkpoint):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(checkpoint).eval()


def reference(hf_model, context, question, answer):
    """(exact, logprob, first_rank, greedy) from one full HF forward over context+question+answer."""
    ids = torch.tensor([context + question + answer])
    with torch.no_grad():
        logits = hf_model(ids).logits[0].float()
    start = len(context) + len(question) - 1
    rows = logits[start:start + len(answer)]
    gold = torch.tensor(answer)
    logp = torch.log_softmax(rows, -1)[torch.arange(len(answer)), gold].sum().item()
    greedy = rows.argmax(-1)
    rank = int((rows[0] > rows[0, answer[0]]).sum()) + 1
    return bool((greedy == gold).all()), logp, rank, greedy.tolist()


def test_native_sweep_stores_every_cell(checkpoint, runner, tmp_path):
    db = tmp_path / "r.db"
    result = runner.invoke(main, ["run", "--model", str(checkpoint), "--probe", "niah,kv",
                                  "--lengths", ",".join(map(str, LENGTHS)),
                                  "--depths", ",".join(map(str, DEPTHS)), "--db", str(db), "--quiet"])
    assert result.exit_code == 0, result.output
    with Store(db) as store:
        [run] = store.runs()
        cells = store.cells(run.id)
    assert run.backend["kind"] == "native" and run.backend["chat_template"] is True
    assert run.model_fingerprint == checkpoint_fingerprint(checkpoint)
    assert run.tokenizer_fingerprint.startswith("hf-")
    assert sorted((c["family"], c["length"], c["depth"]) for c in cells) == sorted(
        (f, n, float(d)) for f in ("niah", "kv") for n in LENGTHS for d in DEPTHS)
    for c in cells:
        assert c["error"] is None and isinstance(c["exact"], bool)
        assert c["score"] == float(c["exact"])
        assert c["logprob"] < 0 and math.isfinite(c["logprob"]) and c["first_rank"] >= 1
        assert c["prompt_tokens"] == c["length"] + TEMPLATE_TOKENS
    rerun = runner.invoke(main, ["run", "--model", str(checkpoint), "--probe", "niah,kv",
                                 "--lengths", ",".join(map(str, LENGTHS)),
                                 "--depths", ",".join(map(str, DEPTHS)), "--db", str(db), "--quiet"])
    assert "0 cell(s) done now" in rerun.output and "18 already stored" in rerun.output


@pytest.mark.parametrize("chat_template", [True, False])
def test_teacher_forcing_matches_transformers(checkpoint, hf_model, chat_template):
    from ctxprobe.probes import make_probe

    backend = NativeBackend(str(checkpoint), chat_template=chat_template, max_new_tokens=4)
    for family, depth in (("niah", 0.0), ("kv", 100.0)):
        probe = make_probe(family, 288, depth, tokenizer=backend.tokenizer)
        [got] = backend.run_group([probe])
        context, question = backend.render(probe)
        if not chat_template:
            assert context + question == list(probe.token_ids)
        assert got.prompt_tokens == len(context + question) == 288 + TEMPLATE_TOKENS * chat_template
        prompt_text = backend._head + probe.prompt[:len(probe.prompt) - len(probe.answer_prefix)] \
            + backend._tail + probe.answer_prefix if chat_template else probe.prompt
        answer = answer_ids_after(backend.tokenizer, prompt_text, context + question, probe.answer_text)
        assert backend.tokenizer.decode(answer) == probe.answer_text
        exact, logprob, rank, greedy = reference(hf_model, context, question, answer)
        assert got.exact == exact and got.first_rank == rank
        assert got.logprob == pytest.approx(logprob, abs=1e-3)
        assert got.response == backend.tokenizer.decode(greedy)


def test_open_answers_are_generated_like_transformers_greedy(checkpoint, hf_model):
    from ctxprobe.probes import make_probe

    backend = NativeBackend(str(checkpoint), chat_template=False, max_new_tokens=5)
    probe = make_probe("niah", 256, 50.0, tokenizer=backend.tokenizer)
    probe.answer_text = ""  # no fixed answer: the backend must generate
    [got] = backend.run_group([probe])
    ids = torch.tensor([list(probe.token_ids)])
    with torch.no_grad():
        out = hf_model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=None,
                                pad_token_id=0)[0, ids.shape[1]:].tolist()
    assert got.exact is None and got.logprob is None
    assert got.response == backend.tokenizer.decode(out)


def test_branches_sharing_a_context_score_as_they_do_alone(checkpoint):
    from ctxprobe.probes import make_probe

    backend = NativeBackend(str(checkpoint), max_new_tokens=4)
    probe = make_probe("niah", 256, 50.0, tokenizer=backend.tokenizer)
    [alone] = backend.run_group([probe])
    together = backend.run_group([probe, probe])   # one prefill, two branches
    for got in together:
        assert (got.exact, got.first_rank, got.response) == (alone.exact, alone.first_rank, alone.response)
        assert got.logprob == pytest.approx(alone.logprob, abs=1e-4)


def test_builtin_spec_runs_the_built_in_model_and_finds_its_cliff(runner, tmp_path):
    # The built-in model is built to retrieve up to ~5.8K tokens and fail beyond.
    db = tmp_path / "r.db"
    result = runner.invoke(main, ["run", "--model", "builtin", "--probe", "niah", "--lengths", "2k,8k",
                                  "--depths", "50", "--db", str(db), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "effective length (score >= 85%): 2K" in result.output
    with Store(db) as store:
        [run] = store.runs()
        scores = {c["length"]: c["score"] for c in store.cells(run.id)}
    assert run.name.startswith("builtin-") and scores == {2048: 1.0, 8192: 0.0}


def test_a_rerun_in_another_dtype_is_a_new_run_not_a_resume(checkpoint, runner, tmp_path):
    # Same model and grid in bfloat16 used to get the fp32 run's default name and settings, so it
    # "resumed" it: every cell skipped, the fp32 numbers reported as the bf16 run's.
    db = str(tmp_path / "r.db")
    args = ["run", "--model", str(checkpoint), "--probe", "niah", "--lengths", "256",
            "--depths", "50", "--db", db, "--quiet"]
    assert runner.invoke(main, args).exit_code == 0
    result = runner.invoke(main, args + ["--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    assert "1 cell(s) done now" in result.output
    with Store(db) as store:
        runs = store.runs()
    assert [r.backend["dtype"] for r in runs] == ["float32", "bfloat16"]
    assert runs[0].name != runs[1].name


@pytest.mark.parametrize("device", ["mps", "meta"])
def test_a_device_ctxprobe_cannot_run_on_is_one_line(checkpoint, runner, tmp_path, device):
    db = tmp_path / "r.db"
    result = runner.invoke(main, ["run", "--model", str(checkpoint), "--probe", "niah", "--lengths", "256",
                                  "--depths", "0", "--quiet", "--db", str(db), "--device", device])
    assert result.exit_code == 2, result.output
    assert not db.exists() or runner.invoke(main, ["runs", "--db", str(db)]).output.startswith("no runs")
    assert result.output.strip().splitlines() == [
        f"error: --device {device}: the runner supports cuda and cpu; use --device cuda, cuda:N or cpu"]
