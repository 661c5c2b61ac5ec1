"""A loopback server of model "fake-model" (as FakeOpenAI's) that answers every POST with one
fixed status and raw body, optionally only once `release` is set: for store tests that need a
server to stall, fail, or send bytes FakeOpenAI would not."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ScriptedServer:
    def __init__(self, status: int = 200, body: bytes = b"{}", *, hold: bool = False):
        self.status, self.body = status, body
        self.release, self.arrived = threading.Event(), threading.Event()
        if not hold:
            self.release.set()
        self.posts = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _reply(self, status: int, data: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                models = {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}
                self._reply(200, json.dumps(models).encode())

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.posts += 1
                server.arrived.set()
                server.release.wait(120)
                self._reply(server.status, server.body)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.http.shutdown()
        self.http.server_close()
