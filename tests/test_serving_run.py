"""`ctxprobe run` against serving stacks (issue 16), through the CLI and a loopback server: reasoning
and truncated cells stored, streamed timings stored, the depth sweep's requests in cache-friendly
order, the server's prompt count checked against ours, and --dry-run counting without sending."""

from __future__ import annotations

import itertools
import random

import pytest
from fake_openai import answers_for
from serving_server import Reply, ServingServer

from ctxprobe.cli import main
from ctxprobe.sweep.cells import shared_prefix_tokens
from ctxprobe.store import Store

LENGTHS = [512, 1024]
DEPTHS = [0, 25, 50, 75, 100]


@pytest.fixture(autouse=True)
def no_ambient_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def _run(runner, server, db, *args, lengths=LENGTHS, depths=DEPTHS, probe="niah"):
    return runner.invoke(main, ["run", "--model", f"openai:{server.url}", "--db", str(db), "--probe", probe,
                                "--lengths", ",".join(map(str, lengths)),
                                "--depths", ",".join(map(str, depths)), "--quiet", *args])


def test_reasoning_answers_scored_and_cut_off_cells_marked_truncated(runner, tmp_path):
    gold = answers_for(["niah"], LENGTHS, DEPTHS, 1)

    def script(prompt):
        if len(prompt) > 800:   # the long cells: the limit comes while the model still thinks
            return Reply("", reasoning="first I list the numbers", reasoning_field="reasoning_content",
                         finish_reason="length")
        return Reply(f"<think>the number follows the key</think>{gold[prompt]}")

    db = tmp_path / "r.db"
    with ServingServer(script, first_delay=0.05) as server:
        result = _run(runner, server, db, "--stream", "--reasoning-budget", "64")
        sent = server.bodies
    assert result.exit_code == 0, result.output
    assert all(b["max_tokens"] == 32 + 64 and b["stream"] for b in sent)
    with Store(db, readonly=True) as store:
        cells = store.cells(store.runs()[0].id)
    short = [c for c in cells if c["length"] == 512]
    long = [c for c in cells if c["length"] == 1024]
    assert len(short) == len(long) == len(DEPTHS)
    for c in short:
        assert c["score"] == 1.0 and "<think>" not in c["response"] and c["truncated"] is False
        assert c["reasoning_tokens"] == len("the number follows the key")
        assert c["finish_reason"] == "stop" and c["ttft"] >= 0.05 and c["output_tokens"] > 0
        assert c["latency"] >= c["ttft"]
    for c in long:   # stored, not retried, not scored as wrong
        assert c["truncated"] is True and c["error"] is None
        assert c["score"] is None and c["strict"] is None and c["finish_reason"] == "length"
    # The summary scores only what was answered: 1024 has no reading, 512 is perfect.
    assert "truncated" in result.output


def test_depth_sweep_requests_arrive_in_cache_friendly_order(runner, tmp_path):
    with ServingServer(lambda p: Reply("x")) as server:
        result = _run(runner, server, tmp_path / "r.db", "--concurrency", "1", "--samples", "2")
        order = list(server.prompts)
    assert result.exit_code == 0, result.output
    from ctxprobe.probes import load_tokenizer, make_probe

    tok = load_tokenizer(None)
    key_of = {}   # prompt -> (length, needle offset, sample, ids); two depths may give one prompt
    for n, d, s in itertools.product(LENGTHS, DEPTHS, range(2)):
        p = make_probe("niah", n, float(d), seed=0, sample=s, tokenizer=tok)
        key_of[p.prompt] = (n, p.needle_spans[0][0], s, p.token_ids)
    keys = [key_of[p] for p in order]
    assert len(keys) == len(LENGTHS) * len(DEPTHS) * 2
    # Each (length, sample) group arrives whole, its needles in monotone order ...
    groups = [list(g) for _, g in itertools.groupby(keys, key=lambda k: (k[0], k[2]))]
    assert len(groups) == len(LENGTHS) * 2
    for g in groups:
        offsets = [k[1] for k in g]
        assert offsets in (sorted(offsets), sorted(offsets, reverse=True))
        # ... which shares as much as the best order of that group can (checked by brute force).
        best = max(shared_prefix_tokens(k[3] for k in perm) for perm in itertools.permutations(g))
        assert shared_prefix_tokens(k[3] for k in g) == best
    # A sample's next length starts where the last one ended: deepest needle after deepest.
    for a, b in zip(groups, groups[1:]):
        if a[0][2] == b[0][2]:
            assert a[-1][1] == max(k[1] for k in a) and b[0][1] == max(k[1] for k in b)
    sent = shared_prefix_tokens(k[3] for k in keys)
    shuffled = list(keys)
    random.Random(0).shuffle(shuffled)
    assert sent > shared_prefix_tokens(k[3] for k in shuffled)


def test_server_prompt_count_checked_against_ours(runner, tmp_path):
    # A server that adds 7 template tokens everywhere agrees; one that also cuts long prompts does not.
    honest = lambda p: Reply("x", prompt_tokens_delta=7)  # noqa: E731
    cutting = lambda p: Reply("x", prompt_tokens_delta=7 if len(p) < 800 else -300)  # noqa: E731
    for script, warned in ((honest, False), (cutting, True)):
        db = tmp_path / f"{warned}.db"
        with ServingServer(script) as server:
            result = _run(runner, server, db, "--depths", "50")
        assert result.exit_code == 0, result.output
        assert ("counted the prompt differently" in result.output) is warned, result.output
        with Store(db, readonly=True) as store:
            cells = store.cells(store.runs()[0].id)
        for c in cells:
            assert c["prompt_tokens"] == c["length"]   # ours: the probe's exact length
            assert c["server_prompt_tokens"] == c["length"] + (7 if not warned or c["length"] == 512 else -300)


def test_dry_run_counts_by_hand_and_sends_nothing(runner, tmp_path):
    db = tmp_path / "r.db"
    args = ["--served-model", "reasoner", "--max-new-tokens", "16", "--reasoning-budget", "100",
            "--dry-run", "--price-in", "2.5", "--price-out", "10"]
    with ServingServer(lambda p: Reply("x")) as server:
        result = _run(runner, server, db, *args)
        assert server.completions() == 0 and "/v1/models" not in server.requests
        assert set(server.requests) <= {"/tokenize", "/detokenize"}   # tokenizer calls only
    assert result.exit_code == 0, result.output
    assert not db.exists()
    # By hand: the byte tokenizer makes each probe exactly its length; 5 depths per length.
    prompt = 5 * 512 + 5 * 1024
    output = 10 * (16 + 100)
    cost = (prompt * 2.5 + output * 10) / 1e6
    lines = result.output.splitlines()
    assert lines[0].startswith("dry run: 10 cell(s) to run (0 already stored)")
    assert lines[1] == f"prompt tokens: {prompt:,} in total, 1,024 at the longest cell"
    assert lines[2] == f"output tokens: at most {output:,} (116 per cell)"
    assert lines[3].startswith(f"cost: at most {cost:,.4f} ")
    # After a real run of the 512 cells, only the 1024 ones are left.
    with ServingServer(lambda p: Reply("x")) as server:
        assert _run(runner, server, db, "--served-model", "reasoner", "--max-new-tokens", "16",
                    "--reasoning-budget", "100", lengths=[512]).exit_code == 0
        again = _run(runner, server, db, *args)
    assert again.exit_code == 0, again.output
    assert again.output.splitlines()[0].startswith("dry run: 5 cell(s) to run (5 already stored)")
    assert f"{5 * 1024:,} in total" in again.output


def test_prices_without_dry_run_are_refused(runner, tmp_path):
    result = runner.invoke(main, ["run", "--model", "builtin", "--probe", "niah", "--lengths", "1k",
                                  "--price-in", "3", "--db", str(tmp_path / "r.db")])
    assert result.exit_code == 2 and "add --dry-run" in result.output
    assert not (tmp_path / "r.db").exists()
