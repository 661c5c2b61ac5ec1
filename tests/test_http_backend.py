"""The OpenAI-compatible HTTP backend against a misbehaving server on loopback: retries with
backoff on 429 (honouring Retry-After), 500 and timeouts; malformed replies become errored
cells; the sweep always completes."""

import time

import pytest
from fake_openai import FakeOpenAI, answers_for

from ctxprobe.backends.http import (HttpBackend, JsonClient, RequestFailed, RetryPolicy,
                                    parse_retry_after)
from ctxprobe.errors import UserError
from ctxprobe.store import Store
from ctxprobe.sweep import Grid, open_run, run_sweep

GRID = dict(families=["niah"], lengths=[512, 576], depths=[0.0, 100.0], samples=2)


def backend_for(fake, **kw):
    kw.setdefault("retry_base", 0.01)
    kw.setdefault("environ", {})
    return HttpBackend(fake.url, **kw)


def sweep(tmp_path, backend, name="r"):
    with Store(tmp_path / f"{name}.db") as store:
        spec = Grid(**GRID)
        run = open_run(store, backend, spec, model_spec=f"openai:{backend.base_url}")
        stats = run_sweep(store, run, backend, spec, progress=False)
        return stats, store.cells(run.id)


def test_retry_policy_backs_off_exponentially_with_jitter_and_honours_retry_after():
    policy = RetryPolicy(base=1.0, cap=8.0)
    for attempt, step in enumerate([1, 2, 4, 8, 8]):
        delays = [policy.delay(attempt, None) for _ in range(200)]
        assert 0.5 * step <= min(delays) and max(delays) < 1.5 * step
        assert max(delays) - min(delays) > 0.1 * step  # jittered, not fixed
    assert policy.delay(0, 7.0) == 7.0
    assert policy.delay(0, 1e6) == policy.max_retry_after


def test_parse_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < parse_retry_after(when) <= 31


def test_client_retries_429_500_and_timeouts_then_succeeds():
    waits = []
    with FakeOpenAI(faults=["429", "500", "hang"], retry_after="2", hang_seconds=1.0) as fake:
        client = JsonClient(fake.url, timeout=0.3, policy=RetryPolicy(retries=3, base=0.01),
                            sleep=waits.append)
        reply = client.request("completions", {"model": "m", "prompt": "hi"})
        assert reply["choices"][0]["text"] == "I don't know"
        assert fake.completions_served() == 4
    assert waits[0] == 2.0                      # the server's Retry-After, not the backoff
    assert all(w < 0.1 for w in waits[1:])      # then the policy's own (tiny) backoff


def test_client_gives_up_after_its_retries_and_does_not_retry_client_errors():
    with FakeOpenAI(faults=["500"] * 5) as fake:
        client = JsonClient(fake.url, policy=RetryPolicy(retries=2, base=0.001))
        with pytest.raises(RequestFailed, match="HTTP 500.*gave up after 3 attempts"):
            client.request("completions", {"prompt": "x"})
        assert fake.completions_served() == 3
        with pytest.raises(RequestFailed, match="HTTP 404"):
            client.request("nowhere", {"prompt": "x"})


def test_malformed_json_is_not_retried():
    with FakeOpenAI(faults=["malformed"]) as fake:
        client = JsonClient(fake.url, policy=RetryPolicy(retries=3, base=0.001))
        with pytest.raises(RequestFailed, match="malformed JSON"):
            client.request("completions", {"prompt": "x"})
        assert fake.completions_served() == 1


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_a_sweep_through_faults_completes_with_retries_and_errored_cells(tmp_path, api):
    answers = answers_for(**GRID)
    faults = ["429", "malformed", "500", "hang", "no-choices"]
    with FakeOpenAI(answers, faults=faults, hang_seconds=1.0) as fake:
        backend = backend_for(fake, api=api, concurrency=3, timeout=0.4)
        stats, cells = sweep(tmp_path, backend)
        served = fake.completions_served()
    assert stats.finished == len(cells) == 8
    errors = [c for c in cells if c["error"]]
    assert len(errors) == stats.errored == 2    # the malformed reply and the one with no choices
    assert all("malformed" in c["error"] for c in errors)
    assert all(c["score"] is None for c in errors)
    good = [c for c in cells if not c["error"]]
    assert all(c["score"] == c["strict"] == c["lenient"] == 1.0 and c["exact"] is None for c in good)
    assert all(c["prompt_tokens"] == c["length"] for c in good)   # the server's count of our prompt
    assert served == 8 + 3                      # one retry each for 429, 500 and the timeout


def test_rerun_retries_only_the_errored_cells(tmp_path):
    answers = answers_for(**GRID)
    with FakeOpenAI(answers, faults=["malformed", "malformed"]) as fake:
        backend = backend_for(fake, concurrency=1)
        first, _ = sweep(tmp_path, backend)
        second, cells = sweep(tmp_path, backend)
        assert fake.completions_served() == 8 + 2
    assert first.errored == 2 and second.finished == 2 and second.skipped == 6
    assert second.errored == 0 and all(c["score"] == 1.0 for c in cells)


def test_lenient_passes_a_chatty_answer_that_strict_fails(tmp_path):
    answers = {p: f"Sure! The number is{a}." for p, a in answers_for(**GRID).items()}
    with FakeOpenAI(answers) as fake:
        _, cells = sweep(tmp_path, backend_for(fake))
    assert all(c["lenient"] == 1.0 and c["strict"] == 0.0 == c["score"] for c in cells)


@pytest.mark.parametrize("style", ["vllm", "llama.cpp"])
def test_lengths_are_counted_with_the_servers_tokenize(style):
    with FakeOpenAI(tokenize=style) as fake:
        backend = backend_for(fake)
        assert backend.settings["tokenizer"] == f"server/{style}"
        tok = backend.tokenizer
        assert tok.encode("héllo") == list("héllo".encode())
        assert tok.decode(tok.encode("héllo")) == "héllo"
        assert tok.encode_units([" a b", " c"]) == [list(b" a b"), list(b" c")]


def test_no_tokenize_endpoint_needs_a_tokenizer():
    with FakeOpenAI(tokenize=None) as fake:
        with pytest.raises(UserError, match="no /tokenize endpoint.*--tokenizer"):
            backend_for(fake)
        backend = backend_for(fake, tokenizer_path="byte")
        assert backend.tokenizer.fingerprint == "byte-utf8-v1"


def test_setup_finds_the_served_model_and_refuses_an_unreachable_server():
    with FakeOpenAI() as fake:
        url = fake.url
        assert backend_for(fake).served_model == "fake-model"   # the only one listed
        bare = HttpBackend(url.removesuffix("/v1"), environ={})   # a bare host means /v1
        assert bare.base_url == url
    with pytest.raises(UserError, match="cannot reach server"):
        HttpBackend(url, environ={}, retries=0)


def test_a_tokenizer_outliving_its_server_uses_the_live_one():
    # probes caches haystack pools by tokenizer fingerprint and keeps the first object it saw.
    with FakeOpenAI() as first:
        stale = backend_for(first).tokenizer
    with FakeOpenAI() as second:
        live = backend_for(second).tokenizer
        assert stale.fingerprint == live.fingerprint
        assert stale.encode("never seen before") == list(b"never seen before")
        assert stale.decode([104, 105]) == "hi"
        assert any(r["path"] == "/tokenize" for r in second.log)


def test_a_tokenizer_that_fails_mid_sweep_is_a_user_error_not_a_traceback():
    # Probes are built in the sweep's main thread; a RequestFailed escaping from there used to
    # reach the CLI as a traceback (it is neither a ValueError nor an OSError).
    with FakeOpenAI() as fake:
        tok = backend_for(fake, retries=0).tokenizer
        fake.tokenize = None  # the server stops tokenizing
        with pytest.raises(UserError, match="tokenizer failed.*rerun the same command"):
            tok.encode("a sentence this test alone tokenizes")
        with pytest.raises(UserError, match="tokenizer failed"):
            tok.decode([104, 105])


def test_one_persistent_connection_per_thread_and_a_dropped_one_is_replaced():
    # A kept-alive connection carries every request of a thread; when the server closes it
    # between requests (as servers do with idle connections), the next request opens another
    # without spending a retry, and that one is kept in turn.
    with FakeOpenAI(keep_alive=True, faults=[None, None, "drop-after"]) as fake:
        client = JsonClient(fake.url, policy=RetryPolicy(retries=0))
        for _ in range(3):
            client.request("completions", {"model": "m", "prompt": "hi"})
        assert fake.connections == 1
        deadline = time.monotonic() + 30
        while fake.closed < 1 and time.monotonic() < deadline:   # the server has hung up
            time.sleep(0.01)
        for _ in range(3):
            client.request("completions", {"model": "m", "prompt": "hi"})
        client.close()
        conns = [r["conn"] for r in fake.log]
    assert fake.completions_served() == 6 and fake.connections == 2
    assert len(set(conns[:3])) == 1 and len(set(conns[3:])) == 1 and conns[0] != conns[3]


def test_a_sweep_keeps_at_most_one_connection_per_worker(tmp_path):
    with FakeOpenAI(answers_for(**GRID), keep_alive=True) as fake:
        stats, cells = sweep(tmp_path, backend_for(fake, concurrency=2, tokenizer_path="byte"))
        completions = {r["conn"] for r in fake.log if r["path"].endswith("completions")}
    assert stats.finished == 8 and all(c["score"] == 1.0 for c in cells)
    assert 1 <= len(completions) <= 2    # one per worker thread, however the groups fell


def test_the_timeout_bounds_the_whole_request_not_each_read():
    # One byte every 0.2 s never leaves a socket read waiting 1 s, yet the request must end at
    # 1 s; the server would drip for 20 s.
    with FakeOpenAI(faults=["drip"], drip_interval=0.2, drip_for=20.0) as fake:
        client = JsonClient(fake.url, timeout=1.0, policy=RetryPolicy(retries=0))
        started = time.monotonic()
        with pytest.raises(RequestFailed, match="timed out after 1 s"):
            client.request("completions", {"model": "m", "prompt": "hi"})
        assert time.monotonic() - started < 10
        client.close()


def test_a_post_is_not_turned_into_a_get_by_a_same_origin_302():
    with FakeOpenAI(faults=["redirect"], redirect_status=302) as fake:
        fake.redirect_to = fake.origin
        client = JsonClient(fake.url, policy=RetryPolicy(retries=3))
        with pytest.raises(RequestFailed, match="a POST is not re-sent there as a GET"):
            client.request("completions", {"model": "m", "prompt": "hi"})
        assert [r["path"] for r in fake.log] == ["/v1/completions"]   # not retried, not followed


def test_max_response_bytes_caps_a_reply_and_is_a_run_flag(tmp_path, runner, monkeypatch):
    from ctxprobe.cli import main

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    args = ["run", "--probe", "niah", "--lengths", "512", "--depths", "0,100", "--tokenizer", "byte",
            "--concurrency", "1", "--db", str(tmp_path / "r.db"), "--name", "capped", "--quiet"]
    with FakeOpenAI(answers_for(**GRID), faults=["huge"], huge_bytes=4096) as fake:
        result = runner.invoke(main, args + ["--model", f"openai:{fake.url}", "--max-response-bytes", "2048"])
        refused = runner.invoke(main, args + ["--model", f"openai:{fake.url}", "--max-response-bytes", "10"])
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "r.db") as store:
        run = store.get_run("capped")
        cells = store.cells(run.id)
    assert run.backend["max_response_bytes"] == 2048
    [errored] = [c for c in cells if c["error"]]
    assert "larger than 2048 bytes (--max-response-bytes)" in errored["error"]
    assert len(cells) == 2 and errored["response"] == ""
    assert refused.exit_code == 2 and "--max-response-bytes must be at least 1024" in refused.output
