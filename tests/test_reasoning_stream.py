"""Reasoning replies (issue 16 item 2) and streamed latency (item 3) against a loopback server:
the answer is scored without its reasoning in both shapes, a reply cut off by the token limit is
marked truncated, and SSE streams give time to first token, output tokens and a decode rate."""

from __future__ import annotations

import pytest

from ctxprobe.backends.http import HttpBackend
from ctxprobe.backends.reasoning import answer_of, split_reasoning
from serving_server import Reply, ServingServer


class _Probe:
    def __init__(self, prompt: str):
        from ctxprobe.probes import load_tokenizer

        self.prompt = prompt
        self.token_ids = load_tokenizer(None).encode(prompt)


def _backend(server, **kw) -> HttpBackend:
    kw.setdefault("retries", 0)
    return HttpBackend(server.url, environ={}, **kw)


# -- the answer of a reasoning reply -------------------------------------------------------

def test_think_tags_are_removed_from_the_answer():
    assert split_reasoning("<think>add 2 and 2</think>\n4") == ("4", "add 2 and 2", False)
    # Qwen3/R1 templates open the block in the prompt: the text starts inside it.
    assert split_reasoning("let me see\n</think>\n\nParis") == ("Paris", "let me see", False)
    assert split_reasoning("<think>still thinking") == ("", "still thinking", True)
    assert split_reasoning(" 1234567") == (" 1234567", "", False)   # no reasoning: text untouched


def test_truncated_only_when_the_limit_came_before_any_answer():
    assert answer_of("<think>long", {}, "length").truncated
    assert answer_of("", {"reasoning_content": "hmm"}, "length").truncated
    assert not answer_of("Paris", {"reasoning_content": "hmm"}, "length").truncated  # an answer came
    assert not answer_of("", {}, "stop").truncated                                   # an empty answer


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_reasoning_in_the_text(api):
    with ServingServer(lambda p: Reply("<think>The number is in the text.</think> 7301")) as server:
        backend = _backend(server, api=api)
        result = backend.ask(_Probe("What is the number?"))
        backend.close()
    assert result.error is None
    assert result.response == "7301"
    assert result.reasoning_tokens == len("The number is in the text.")   # byte tokenizer: bytes
    assert result.finish_reason == "stop" and not result.truncated


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_beside_the_text(field):
    script = lambda p: Reply(" 7301", reasoning="I looked for it.", reasoning_field=field,  # noqa: E731
                             reasoning_tokens=42)
    with ServingServer(script) as server:
        backend = _backend(server)
        result = backend.ask(_Probe("What is the number?"))
        backend.close()
    assert result.response == " 7301"
    assert result.reasoning_tokens == 42          # as the server reported it
    assert result.output_tokens == len("I looked for it. 7301")


@pytest.mark.parametrize("stream", [False, True])
def test_a_reply_cut_off_while_thinking_is_truncated(stream):
    script = lambda p: Reply("", reasoning="so the first step is", reasoning_field="reasoning_content",  # noqa: E731
                             finish_reason="length")
    with ServingServer(script) as server:
        backend = _backend(server, max_new_tokens=8, reasoning_budget=100, stream=stream)
        result = backend.ask(_Probe("What is the number?"))
        backend.close()
        sent = server.bodies[-1]
    assert sent["max_tokens"] == 108              # the answer's tokens plus the reasoning budget
    assert result.error is None and result.truncated and result.finish_reason == "length"
    assert result.response == ""


# -- streaming ---------------------------------------------------------------------------

@pytest.mark.parametrize("api", ["chat", "completions"])
def test_stream_times_the_first_token_and_the_decode(api):
    # The server holds the first piece back 0.4 s and each later one 0.05 s: the client cannot
    # see them earlier, whatever the machine's load.
    with ServingServer(lambda p: Reply(" 7301"), first_delay=0.4, gap=0.05) as server:
        backend = _backend(server, api=api, stream=True)
        result = backend.ask(_Probe("What is the number?"))
        backend.close()
        sent = server.bodies[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert result.error is None and result.response == " 7301"
    assert result.ttft >= 0.4
    assert result.latency >= result.ttft + 4 * 0.05
    assert result.output_tokens == 5              # usage.completion_tokens
    expected_rate = 4 / (result.latency - result.ttft)
    assert result.decode_rate == pytest.approx(expected_rate, rel=0.05)


def test_stream_without_usage_counts_the_pieces():
    with ServingServer(lambda p: Reply("Paris", pieces=["Par", "is"]), usage=False) as server:
        backend = _backend(server, stream=True)
        result = backend.ask(_Probe("Capital?"))
        backend.close()
    assert result.response == "Paris" and result.output_tokens == 2
    assert result.server_prompt_tokens is None


def test_stream_over_the_size_cap_is_an_error():
    with ServingServer(lambda p: Reply("x" * 3000)) as server:
        backend = _backend(server, stream=True, max_response_bytes=4096)
        result = backend.ask(_Probe("Say x"))
        backend.close()
    assert result.error is not None and "larger than 4096 bytes" in result.error


def test_the_deadline_bounds_the_whole_stream():
    # Each piece alone arrives well within the timeout; all of them together do not.
    with ServingServer(lambda p: Reply("abcdefghijkl"), gap=0.3) as server:
        backend = _backend(server, stream=True, timeout=1.0)
        result = backend.ask(_Probe("Say it"))
        backend.close()
    assert result.error is not None and "timed out" in result.error


def test_prompt_tokens_ours_and_the_servers():
    with ServingServer(lambda p: Reply("ok", prompt_tokens_delta=11)) as server:
        backend = _backend(server)
        probe = _Probe("Count me")
        result = backend.ask(probe)
        backend.close()
    assert result.prompt_tokens == len(probe.token_ids)
    assert result.server_prompt_tokens == len(probe.token_ids) + 11
