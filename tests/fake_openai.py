"""A deterministic fake OpenAI-compatible server on loopback, for the HTTP backend's tests.

It answers chat and completions requests from a {prompt: answer} table, serves /tokenize and
/detokenize (vLLM's or llama.cpp's form) with the built-in byte tokenizer, and can misbehave:
`faults` is a list consumed one per completion request, each one of
    "429" (with Retry-After), "500", "hang" (sleep past the client's timeout), "malformed"
    (invalid JSON), "no-choices" (valid JSON of the wrong shape), "echo-auth" (a 401 whose
    message quotes the Authorization header; "echo-auth-late" puts it across the 300th
    character), "leak-auth" (an answer that quotes it), or None (answer normally).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def answers_for(families, lengths, depths, samples, seed=0) -> dict[str, str]:
    """{prompt: the gold answer text} for every cell, built as the sweep builds them (bytes)."""
    from probes import load_tokenizer, make_probe

    tok = load_tokenizer(None)
    return {p.prompt: p.answer_text
            for f in families for n in lengths for d in depths for s in range(samples)
            for p in [make_probe(f, n, float(d), seed=seed, sample=s, tokenizer=tok)]}


class FakeOpenAI:
    def __init__(self, answers: dict[str, str] | None = None, *, model: str = "fake-model",
                 delay: float = 0.0, faults: list | None = None, tokenize: str | None = "vllm",
                 hang_seconds: float = 2.0, retry_after: str = "0", unknown_answer: str = "I don't know"):
        self.answers = answers or {}
        self.model, self.delay, self.tokenize = model, delay, tokenize
        self.faults = list(faults or [])
        self.hang_seconds, self.retry_after, self.unknown_answer = hang_seconds, retry_after, unknown_answer
        self.log: list[dict] = []   # every request: path, headers, body
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def completions_served(self) -> int:
        return sum(1 for r in self.log if r["path"].endswith("completions"))

    def _next_fault(self):
        with self.lock:
            return self.faults.pop(0) if self.faults else None

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
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
                    fake.log.append({"path": self.path, "headers": dict(self.headers), "body": body})

            def do_GET(self):
                self._record(None)
                if self.path == "/v1/models":
                    return self._reply(200, {"object": "list", "data": [{"id": fake.model, "object": "model"}]})
                self._reply(404, {"error": "not found"})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                self._record(body)
                from probes import load_tokenizer

                tok = load_tokenizer(None)
                if self.path in ("/tokenize", "/detokenize"):
                    vllm = fake.tokenize == "vllm"
                    if fake.tokenize is None or ("prompt" if vllm else "content") not in body \
                            and self.path == "/tokenize":
                        return self._reply(404 if fake.tokenize is None else 422, {"detail": "no"})
                    if self.path == "/tokenize":
                        ids = tok.encode(body["prompt" if vllm else "content"])
                        return self._reply(200, {"tokens": ids, "count": len(ids)} if vllm else {"tokens": ids})
                    text = tok.decode(body["tokens"])
                    return self._reply(200, {"prompt": text} if vllm else {"content": text})
                if self.path not in ("/v1/chat/completions", "/v1/completions"):
                    return self._reply(404, {"error": "not found"})
                fault = fake._next_fault()
                if fault == "429":
                    return self._reply(429, {"error": "slow down"}, {"Retry-After": fake.retry_after})
                if fault == "500":
                    return self._reply(500, {"error": "boom"})
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
                chat = self.path.endswith("chat/completions")
                prompt = body["messages"][-1]["content"] if chat else body["prompt"]
                answer = fake.answers.get(prompt, fake.unknown_answer)
                if fault == "leak-auth":  # a reply that quotes the key back
                    answer += " " + self.headers.get("Authorization", "")
                time.sleep(fake.delay)
                choice = ({"index": 0, "message": {"role": "assistant", "content": answer}}
                          if chat else {"index": 0, "text": answer})
                self._reply(200, {"id": "x", "model": body.get("model"), "choices": [choice],
                                  "usage": {"prompt_tokens": len(tok.encode(prompt)),
                                            "completion_tokens": len(tok.encode(answer))}})

        return Handler
