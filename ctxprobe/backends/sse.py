"""Streamed completions (server-sent events) -> one reply of the non-streamed shape, plus timings.

An OpenAI-compatible server with `"stream": true` sends `data: {json}` events, each a chunk with
`choices[0].delta` (chat: content, and reasoning_content or reasoning for thinking models) or
`choices[0].text` (completions), the last with a `finish_reason`; with `stream_options:
{"include_usage": true}` a final chunk carries `usage`; `data: [DONE]` ends the stream.

Timings are taken on arrival, from when the request was sent: time to first token (the first
chunk that carries any text, visible or reasoning), total time, and the decode rate
(output tokens after the first / seconds after the first). Output tokens are the server's
`usage.completion_tokens` when it reports them, else the count of chunks that carried text
(servers send one token per chunk as they decode).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass


class StreamError(Exception):
    """A stream that is not the events we expect, or that reports an error itself."""


@dataclass
class Timing:
    ttft: float | None           # seconds to the first chunk with text; None: no text came
    total: float                 # seconds to the end of the stream
    output_tokens: int | None
    decode_rate: float | None    # tokens per second after the first; None when not measurable


def events(lines: Iterable[bytes]) -> Iterable[str]:
    """The `data` of each event, in order (multi-line data joined by newlines; comments, `event:`
    and `id:` fields ignored), up to `[DONE]` or the end of the stream."""
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:                          # a blank line ends an event
            if data:
                joined = "\n".join(data)
                data = []
                if joined.strip() == "[DONE]":
                    return
                yield joined
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data and "\n".join(data).strip() != "[DONE]":
        yield "\n".join(data)                 # a last event without its blank line


def assemble(lines: Iterable[bytes], api: str, started: float, clock=time.perf_counter
             ) -> tuple[dict, Timing]:
    """Read a whole stream: (a reply shaped as the non-streamed one, its timings).

    `started` is the clock reading when the request was sent."""
    text: list[str] = []
    reasoning: list[str] = []
    finish_reason = None
    usage: dict = {}
    first = None
    text_chunks = 0
    for data in events(lines):
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            raise StreamError(f"malformed event in the stream: {data[:120]!r}") from None
        if not isinstance(chunk, dict):
            raise StreamError(f"malformed event in the stream: {data[:120]!r}")
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise StreamError(f"the server ended the stream with an error: {str(message)[:300]}")
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            piece, thought = _pieces(choice, api)
            if piece or thought:
                text_chunks += 1
                if first is None:
                    first = clock()
            text.append(piece)
            reasoning.append(thought)
            if choice.get("finish_reason"):
                finish_reason = choice["finish_reason"]
    end = clock()
    joined, thoughts = "".join(text), "".join(reasoning)
    if api == "chat":
        message = {"role": "assistant", "content": joined}
        if thoughts:
            message["reasoning_content"] = thoughts
        choice = {"index": 0, "message": message, "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": joined, "finish_reason": finish_reason}
        if thoughts:
            choice["reasoning_content"] = thoughts
    reply = {"choices": [choice], "usage": usage}
    reported = usage.get("completion_tokens")
    output = reported if isinstance(reported, int) and not isinstance(reported, bool) else text_chunks
    ttft = None if first is None else first - started
    rate = None
    if first is not None and output > 1 and end > first:
        rate = (output - 1) / (end - first)
    return reply, Timing(ttft=ttft, total=end - started, output_tokens=output, decode_rate=rate)


def unstreamed(started: float, clock=time.perf_counter) -> Timing:
    """Timings of a reply that came whole although a stream was asked for: total time only."""
    return Timing(ttft=None, total=clock() - started, output_tokens=None, decode_rate=None)


def _pieces(choice: dict, api: str) -> tuple[str, str]:
    """(visible text, reasoning text) of one streamed choice."""
    source = choice.get("delta") if api == "chat" else choice
    if not isinstance(source, dict):
        return "", ""
    piece = source.get("content") if api == "chat" else source.get("text")
    thought = source.get("reasoning_content") or source.get("reasoning")
    return (piece if isinstance(piece, str) else "", thought if isinstance(thought, str) else "")
