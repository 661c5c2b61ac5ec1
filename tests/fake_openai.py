"""A deterministic fake OpenAI-compatible server on loopback, for the HTTP backend's tests.

It answers chat and completions requests from a {prompt: answer} table, serves /tokenize and
/detokenize (vLLM's or llama.cpp's form) with the built-in byte tokenizer, and can misbehave:
`faults` is a list consumed one per completion request, each one of
    "429" (with Retry-After: `retry_after`), "429-date" (Retry-After as an HTTP date
    `retry_after_date_in` seconds ahead), "500" or any other 3-digit status, "hang" (sleep
    `hang_seconds` before answering), "malformed" (invalid JSON), "html" (a 200 that is an HTML
    page), "no-choices" (valid JSON of the wrong shape), "echo-auth" (a 401 whose message
    quotes the Authorization header; "echo-auth-late" puts it across the 300th character),
    "leak-auth" (an answer that quotes it), "reset" (read the request, then reset the
    connection), "truncated" (a Content-Length the body falls short of), "drip" (the answer's
    body one byte per `drip_interval` seconds, for at most `drip_for` seconds, then the
    connection closes), "huge" (an answer of `huge_bytes` with its Content-Length), "huge-stream"
    (the same without a length, read until the connection closes), "redirect" (`redirect_status`
    to `redirect_to` + the same path), "redirect-same" (307 to the same path on this server,
    with ?moved=1), "drop-after" (answer, then close the kept-alive connection without saying
    so), or None (answer normally). `model_faults` does the same for GET /v1/models ("redirect"
    only). With keep_alive the server speaks HTTP/1.1 and keeps connections open; `connections`
    counts the TCP connections it accepted.
"""

from __future__ import annotations

import email.utils
import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from loopback import LoopbackServer


def answers_for(families, lengths, depths, samples, seed=0) -> dict[str, str]:
    """{prompt: the gold answer text} for every cell, built as the sweep builds them (bytes)."""
    from ctxprobe.probes import load_tokenizer, make_probe

    tok = load_tokenizer(None)
    return {p.prompt: p.answer_text
            for f in families for n in lengths for d in depths for s in range(samples)
            for p in [make_probe(f, n, float(d), seed=seed, sample=s, tokenizer=tok)]}


class _QuietServer(ThreadingHTTPServer):
    closed = 0   # connections this server has closed (after the socket's close)

    def shutdown_request(self, request):
        super().shutdown_request(request)
        self.closed += 1

    def handle_error(self, request, client_address):
        import sys

        if not isinstance(sys.exc_info()[1], OSError):  # a client that hung up is no news
            super().handle_error(request, client_address)


class FakeOpenAI(LoopbackServer):
    server_class = _QuietServer

    def __init__(self, answers: dict[str, str] | None = None, *, model: str = "fake-model",
                 delay: float = 0.0, faults: list | None = None, tokenize: str | None = "vllm",
                 hang_seconds: float = 2.0, retry_after: str = "0", unknown_answer: str = "I don't know",
                 keep_alive: bool = False, model_faults: list | None = None, retry_after_date_in: float = 30.0,
                 drip_interval: float = 0.25, drip_for: float = 10.0, huge_bytes: int = 2 << 20,
                 redirect_to: str | None = None, redirect_status: int = 302):
        self.answers = answers or {}
        self.model, self.delay, self.tokenize = model, delay, tokenize
        self.faults = list(faults or [])
        self.model_faults = list(model_faults or [])
        self.hang_seconds, self.retry_after, self.unknown_answer = hang_seconds, retry_after, unknown_answer
        self.keep_alive, self.retry_after_date_in = keep_alive, retry_after_date_in
        self.drip_interval, self.drip_for, self.huge_bytes = drip_interval, drip_for, huge_bytes
        self.redirect_to, self.redirect_status = redirect_to, redirect_status
        self.log: list[dict] = []   # every request: path, headers, body
        self.connections = 0        # TCP connections accepted
        self.lock = threading.Lock()
        super().__init__()

    @property
    def closed(self) -> int:
        """Connections this server has closed so far."""
        return self.server.closed

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def completions_served(self) -> int:
        return sum(1 for r in self.log if r["path"].endswith("completions"))

    def _next_fault(self, faults=None):
        faults = self.faults if faults is None else faults
        with self.lock:
            return faults.pop(0) if faults else None

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if fake.keep_alive else "HTTP/1.0"

            def setup(self):
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms stalls
                with fake.lock:
                    fake.connections += 1

            def log_message(self, *args):  # keep test output clean
                pass

            def _reply(self, status: int, body, headers=None):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test); nothing to do

            def _record(self, body):
                with fake.lock:
                    fake.log.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                     "conn": self.client_address[1]})  # the client's port: its connection

            def _raw(self, data: bytes) -> bool:
                try:
                    self.wfile.write(data)
                    self.wfile.flush()
                    return True
                except OSError:
                    return False  # the client went away

            def _redirect(self, status: int, location: str):
                self._reply(status, {"moved": location}, {"Location": location})

            def do_GET(self):
                self._record(None)
                route = self.path.split("?", 1)[0]
                if route == "/v1/models" and fake._next_fault(fake.model_faults) == "redirect":
                    return self._redirect(fake.redirect_status, fake.redirect_to + self.path)
                if route == "/v1/models":
                    return self._reply(200, {"object": "list", "data": [{"id": fake.model, "object": "model"}]})
                self._reply(404, {"error": "not found"})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                self._record(body)
                route = self.path.split("?", 1)[0]
                from ctxprobe.probes import load_tokenizer

                tok = load_tokenizer(None)
                if route in ("/tokenize", "/detokenize"):
                    vllm = fake.tokenize == "vllm"
                    if fake.tokenize is None or ("prompt" if vllm else "content") not in body \
                            and route == "/tokenize":
                        return self._reply(404 if fake.tokenize is None else 422, {"detail": "no"})
                    if route == "/tokenize":
                        ids = tok.encode(body["prompt" if vllm else "content"])
                        return self._reply(200, {"tokens": ids, "count": len(ids)} if vllm else {"tokens": ids})
                    text = tok.decode(body["tokens"])
                    return self._reply(200, {"prompt": text} if vllm else {"content": text})
                if route not in ("/v1/chat/completions", "/v1/completions"):
                    return self._reply(404, {"error": "not found"})
                fault = fake._next_fault()
                if fault == "429":
                    return self._reply(429, {"error": "slow down"}, {"Retry-After": fake.retry_after})
                if fault == "429-date":
                    when = email.utils.formatdate(time.time() + fake.retry_after_date_in, usegmt=True)
                    return self._reply(429, {"error": "slow down"}, {"Retry-After": when})
                if fault == "500":
                    return self._reply(500, {"error": "boom"})
                if isinstance(fault, str) and fault.isdigit():
                    return self._reply(int(fault), {"error": f"status {fault}"})
                if fault == "reset":  # RST instead of a reply: SO_LINGER 0, then close
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                if fault == "truncated":
                    self.close_connection = True
                    return self._raw(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                     b"Content-Length: 1000\r\nConnection: close\r\n\r\n{\"choices\": [")
                if fault == "html":
                    return self._reply(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>")
                if fault == "redirect":
                    return self._redirect(fake.redirect_status, fake.redirect_to + self.path)
                if fault == "redirect-same":
                    return self._redirect(307, route + "?moved=1")
                if fault == "hang":
                    time.sleep(fake.hang_seconds)
                if fault == "malformed":
                    return self._reply(200, b'{"choices": [{"text": "unterminated')
                if fault in ("echo-auth", "echo-auth-late"):  # as hosted APIs quote a bad key
                    auth = self.headers.get("Authorization", "")
                    pad = "." * 230 if fault == "echo-auth-late" else ""  # key at chars 276-309
                    return self._reply(401, {"error": f"{pad}Incorrect API key provided: {auth}"})
                if fault == "no-choices":
                    return self._reply(200, {"object": "chat.completion", "choices": []})
                chat = route.endswith("chat/completions")
                prompt = body["messages"][-1]["content"] if chat else body["prompt"]
                answer = fake.answers.get(prompt, fake.unknown_answer)
                if fault == "leak-auth":  # a reply that quotes the key back
                    answer += " " + self.headers.get("Authorization", "")
                if fault in ("huge", "huge-stream"):
                    answer += " " + "x" * fake.huge_bytes
                time.sleep(fake.delay)
                choice = ({"index": 0, "message": {"role": "assistant", "content": answer}}
                          if chat else {"index": 0, "text": answer})
                reply = {"id": "x", "model": body.get("model"), "choices": [choice],
                         "usage": {"prompt_tokens": len(tok.encode(prompt)),
                                   "completion_tokens": len(tok.encode(answer))}}
                if fault == "drip":
                    return self._drip(json.dumps(reply).encode())
                if fault == "huge-stream":  # no length: the body ends when the connection does
                    self.close_connection = True
                    return self._raw(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n"
                                     + json.dumps(reply).encode())
                self._reply(200, reply)
                if fault == "drop-after":
                    self.close_connection = True  # closed after this reply, unannounced

            def _drip(self, data: bytes):
                self.close_connection = True
                head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
                if not self._raw(head):
                    return
                stop = time.monotonic() + fake.drip_for
                for i in range(len(data)):
                    if time.monotonic() > stop or not self._raw(data[i:i + 1]):
                        return  # out of patience (the connection closes short) or the client left
                    time.sleep(fake.drip_interval)

        return Handler
