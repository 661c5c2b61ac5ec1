"""A loopback OpenAI-compatible server of the shapes that serving stacks send, for issue 16's tests.

`script(prompt) -> Reply` says what to answer to each prompt (the last user message, or the
completions prompt). A Reply may carry reasoning in the text (`<think>`), in a field beside the
text (`reasoning_content` or `reasoning`), a finish_reason, and a usage block. With
`"stream": true` the answer goes as server-sent events over chunked HTTP/1.1: one chunk per
piece, `first_delay` seconds before the first piece and `gap` seconds between the others, then
the usage chunk when `stream_options.include_usage` asks for it, then `data: [DONE]`.
/tokenize and /detokenize speak vLLM's form with the built-in byte tokenizer. `prompts` lists
every completion request's prompt in arrival order; `requests` counts requests per route.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from loopback import LoopbackServer, send_json


@dataclass
class Reply:
    content: str = "I don't know"
    reasoning: str = ""                  # sent in `reasoning_field` (streamed first)
    reasoning_field: str | None = None   # "reasoning_content" | "reasoning" | None
    finish_reason: str = "stop"
    reasoning_tokens: int | None = None  # reported in usage.completion_tokens_details
    prompt_tokens_delta: int = 0         # added to the true prompt count in usage (a lying server)
    pieces: list[str] = field(default_factory=list)   # streamed pieces; default: one per character


class ServingServer(LoopbackServer):
    def __init__(self, script, *, model: str = "reasoner", first_delay: float = 0.0,
                 gap: float = 0.0, usage: bool = True):
        self.script, self.model = script, model
        self.first_delay, self.gap, self.usage = first_delay, gap, usage
        self.prompts: list[str] = []
        self.requests: dict[str, int] = {}
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        super().__init__()

    def completions(self) -> int:
        return sum(n for route, n in self.requests.items() if route.endswith("completions"))

    def _handler(self):
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args):
                pass

            def _count(self):
                route = self.path.split("?", 1)[0]
                with srv.lock:
                    srv.requests[route] = srv.requests.get(route, 0) + 1
                return route

            def _json(self, status, body):
                send_json(self, status, body)

            def do_GET(self):
                if self._count() == "/v1/models":
                    return self._json(200, {"object": "list", "data": [{"id": srv.model}]})
                self._json(404, {"error": "not found"})

            def do_POST(self):
                route = self._count()
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                from ctxprobe.probes import load_tokenizer

                tok = load_tokenizer(None)
                if route == "/tokenize":
                    return self._json(200, {"tokens": tok.encode(body["prompt"])})
                if route == "/detokenize":
                    return self._json(200, {"prompt": tok.decode(body["tokens"])})
                if route not in ("/v1/chat/completions", "/v1/completions"):
                    return self._json(404, {"error": "not found"})
                chat = route.endswith("chat/completions")
                prompt = body["messages"][-1]["content"] if chat else body["prompt"]
                with srv.lock:
                    srv.prompts.append(prompt)
                    srv.bodies.append(body)
                reply = srv.script(prompt)
                completion = len(tok.encode(reply.reasoning + reply.content))
                usage = {"prompt_tokens": len(tok.encode(prompt)) + reply.prompt_tokens_delta,
                         "completion_tokens": completion, "total_tokens": completion}
                if reply.reasoning_tokens is not None:
                    usage["completion_tokens_details"] = {"reasoning_tokens": reply.reasoning_tokens}
                if body.get("stream"):
                    include = (body.get("stream_options") or {}).get("include_usage") and srv.usage
                    return self._stream(chat, reply, usage if include else None)
                extra = {reply.reasoning_field: reply.reasoning} if reply.reasoning_field else {}
                choice = ({"index": 0, "message": {"role": "assistant", "content": reply.content, **extra}}
                          if chat else {"index": 0, "text": reply.content, **extra})
                choice["finish_reason"] = reply.finish_reason
                self._json(200, {"id": "x", "choices": [choice], **({"usage": usage} if srv.usage else {})})

            def _stream(self, chat, reply, usage):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self._event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]} if chat else None)
                pieces = [(reply.reasoning_field, p) for p in reply.reasoning] if reply.reasoning_field else []
                pieces += [(None, p) for p in (reply.pieces or list(reply.content))]
                for i, (kind, piece) in enumerate(pieces):
                    time.sleep(srv.first_delay if i == 0 else srv.gap)
                    key = kind or ("content" if chat else "text")
                    choice = {"index": 0, "delta": {key: piece}} if chat else {"index": 0, key: piece}
                    self._event({"choices": [choice]})
                last = {"index": 0, "delta": {}} if chat else {"index": 0, "text": ""}
                self._event({"choices": [{**last, "finish_reason": reply.finish_reason}]})
                if usage is not None:
                    self._event({"choices": [], "usage": usage})
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")

            def _event(self, obj):
                if obj is not None:
                    self._chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

            def _chunk(self, data: bytes):
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        return Handler
