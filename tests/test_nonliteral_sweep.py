"""The families that literal matching cannot pass, swept end to end: through the HTTP backend
against a loopback server that answers by literal lookup (it must pass the literal controls and
fail the non-literal probes), and through `ctxprobe run` on a tiny checkpoint whose chat
template renders mrcr's conversation (its length counts the whole rendered conversation)."""

import pytest
from literal_server import LiteralServer
from tiny_llama import TEMPLATE, TEMPLATE_TOKENS, write_checkpoint

from ctxprobe.cli import main
from ctxprobe.store import Store
from ctxprobe.probes import make_probe

LENGTHS, DEPTHS, SAMPLES = [1024, 2048], [20, 80], 2


def cells_of(db):
    with Store(db) as store:
        [run] = store.runs()
        return store.cells(run.id)


def by_family(cells):
    out = {}
    for c in cells:
        out.setdefault(c["family"], []).append(c)
    return out


def test_literal_lookup_passes_the_literal_controls_and_fails_the_rest(runner, tmp_path):
    db = tmp_path / "r.db"
    with LiteralServer() as server:
        result = runner.invoke(main, ["run", "--model", "openai:" + server.url, "--probe",
                                      "nolima,nolima-literal,mrcr,niah", "--lengths",
                                      ",".join(map(str, LENGTHS)), "--depths", ",".join(map(str, DEPTHS)),
                                      "--samples", str(SAMPLES), "--db", str(db), "--quiet"])
        requests = list(server.requests)
    assert result.exit_code == 0, result.output
    fams = by_family(cells_of(db))
    assert {f: len(c) for f, c in fams.items()} == {f: len(LENGTHS) * len(DEPTHS) * SAMPLES
                                                    for f in ("nolima", "nolima-literal", "mrcr", "niah")}
    assert all(c["error"] is None for cs in fams.values() for c in cs)
    # The literal control and RULER's niah: found by the question's words.
    assert all(c["score"] == 1.0 for c in fams["nolima-literal"] + fams["niah"])
    # The same needles asked through the association alone: never found.
    assert all(c["score"] == 0.0 for c in fams["nolima"])
    # mrcr: the lookup returns the last of the identical requests' replies; right only when that
    # is the one asked for, and then the grader gives 1; else the ratio of two different replies.
    for c in fams["mrcr"]:
        meta = make_probe("mrcr", c["length"], c["depth"], sample=c["sample"]).meta
        if meta["asked_instance"] == meta["instances"]:
            assert c["score"] == 1.0
        else:
            assert 0.0 < c["score"] < 0.95
    assert any(c["score"] < 1 for c in fams["mrcr"])
    # mrcr went as a conversation: alternating messages, the last one the question.
    chats = [r["messages"] for r in requests if len(r["messages"]) > 1]
    assert len(chats) == len(fams["mrcr"])
    for messages in chats:
        assert [m["role"] for m in messages[-3:]] == ["user", "assistant", "user"]
        assert messages[-1]["content"].startswith("Prepend ")
    # Both readings for the hard families, each named; literal families keep the one.
    out = result.output
    assert "nolima: effective length (absolute: score >= 85%): below the shortest length tested" in out
    assert "nolima-literal: effective length (relative: score >= 85% of its own mean score" in out
    assert "niah: effective length (score >= 85%): 2K" in out
    assert "niah: effective length (relative" not in out


def test_literal_lookup_with_the_python_api_and_family_knobs(tmp_path):
    """mrcr with one instance of the request is its literal control; near misses do not give
    nolima a literal path."""
    from ctxprobe.backends import open_backend
    from ctxprobe.sweep import Grid, open_run, run_sweep

    spec = Grid(families=["mrcr", "nolima"], lengths=[1500], depths=[10, 50, 90], samples=2,
                params={"mrcr": {"needles": 1}, "nolima": {"near_misses": 2}})
    with LiteralServer() as server, Store(tmp_path / "r.db") as store:
        backend = open_backend("openai:" + server.url)
        run = open_run(store, backend, spec, model_spec="openai:" + server.url)
        stats = run_sweep(store, run, backend, spec, progress=False)
        backend.close()
        fams = by_family(store.cells(run.id))
    assert stats.finished == 12 and stats.errored == 0
    assert all(c["score"] == 1.0 for c in fams["mrcr"])
    assert all(c["score"] == 0.0 for c in fams["nolima"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("tiny-llama"))


def test_native_run_renders_mrcr_with_the_chat_template(checkpoint, runner, tmp_path):
    from ctxprobe.backends.native import NativeBackend
    from ctxprobe.models.chat import render_chat
    from ctxprobe.models.loader import read_template

    db = tmp_path / "n.db"
    args = ["run", "--model", str(checkpoint), "--probe", "nolima,nolima-literal,mrcr",
            "--lengths", "700,900", "--depths", "50", "--db", str(db), "--quiet"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    fams = by_family(cells_of(db))
    for c in fams["mrcr"]:           # the whole rendered conversation, template included, is the length
        assert c["error"] is None and c["prompt_tokens"] == c["length"]
        assert 0.0 <= c["score"] <= 1.0 and isinstance(c["exact"], bool)
    for c in fams["nolima"] + fams["nolima-literal"]:
        assert c["error"] is None and c["prompt_tokens"] == c["length"] + TEMPLATE_TOKENS

    backend = NativeBackend(str(checkpoint), max_new_tokens=4)
    template, specials = read_template(checkpoint)
    assert template == TEMPLATE and backend.chat_format.name.startswith("template:")
    probe = make_probe("mrcr", 900, 50, tokenizer=backend.tokenizer, needles=4)
    text = render_chat(template, probe.messages, special_tokens=specials)
    assert text == probe.prompt and probe.chat == backend.chat_format.name
    context, question = backend.render(probe)
    assert context + question == backend.tokenizer.encode(text) == probe.token_ids
    assert len(context + question) == 900
    [got] = backend.run_group([probe])
    assert got.error is None and got.prompt_tokens == 900
    # A probe built without the template (a transcript) is refused by a backend that uses one.
    plain = make_probe("mrcr", 900, 50, tokenizer=backend.tokenizer, chat=None)
    assert plain.chat == backend.chat_format.name   # the tokenizer carries the backend's format
    from ctxprobe.probes import load_tokenizer
    from ctxprobe.probes.chat import TRANSCRIPT

    transcript = make_probe("mrcr", 900, 50, tokenizer=load_tokenizer(checkpoint), chat=TRANSCRIPT)
    from ctxprobe.errors import UserError

    with pytest.raises(UserError, match="no-chat-template"):
        backend.render(transcript)
    base = NativeBackend(str(checkpoint), chat_template=False, max_new_tokens=4)
    assert base.render(transcript) == (transcript.context_ids, transcript.question_ids)
