"""The HTTP transport honours the environment's proxies as urllib does (http_proxy, https_proxy,
no_proxy): an http URL goes to the proxy in absolute form, an https one through a CONNECT
tunnel; a proxy's credentials become a Proxy-Authorization header and never reach a message."""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ctxprobe.backends.transport import Transport, TransportError, _connect_to
from fake_openai import FakeOpenAI


class ForwardingProxy:
    """A plain-http forwarding proxy on loopback that records what it is asked."""

    def __init__(self):
        self.seen: list[tuple[str, str, dict]] = []   # (method, request target, headers)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                proxy.seen.append((self.command, self.path, dict(self.headers)))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = urllib.parse.urlsplit(self.path)
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("proxy-authorization", "connection", "host")}
                upstream.request(self.command, target.path or "/", body=body or None, headers=headers)
                reply = upstream.getresponse()
                data = reply.read()
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.getheader("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            do_GET = do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                 "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def proxied(no_proxy_env):
    # Loopback hosts never go through a proxy; the test servers are on loopback, so treat them
    # as remote for these tests.
    import ctxprobe.backends.transport as transport

    no_proxy_env.setattr(transport, "_is_loopback", lambda host: False)
    return no_proxy_env


def test_http_requests_go_through_the_proxy_in_absolute_form(proxied):
    with FakeOpenAI() as server, ForwardingProxy() as proxy:
        proxied.setenv("http_proxy", proxy.url)
        reply = Transport(timeout=30, max_bytes=1 << 20).exchange(
            "GET", f"{server.url}/models", headers={"Authorization": "Bearer k"})
    assert reply.status == 200 and b"fake-model" in reply.body
    [(method, target, _)] = proxy.seen
    assert method == "GET" and target == f"{server.url}/models"


def test_loopback_servers_are_reached_directly(no_proxy_env):
    with FakeOpenAI() as server, ForwardingProxy() as proxy:
        no_proxy_env.setenv("http_proxy", proxy.url)
        reply = Transport(timeout=30, max_bytes=1 << 20).exchange("GET", f"{server.url}/models")
    assert reply.status == 200 and proxy.seen == []


def test_proxy_credentials_become_a_header_and_never_a_message(proxied):
    no_proxy_env = proxied
    with FakeOpenAI() as server, ForwardingProxy() as proxy:
        host_port = proxy.url.split("://")[1]
        no_proxy_env.setenv("http_proxy", f"http://ann:s3cr%40t@{host_port}")
        Transport(timeout=30, max_bytes=1 << 20).exchange("GET", f"{server.url}/models")
    [(_, _, headers)] = proxy.seen
    assert headers["Proxy-Authorization"] == "Basic YW5uOnMzY3JAdA=="   # ann:s3cr@t
    no_proxy_env.setenv("https_proxy", "socks5://ann:s3cret@127.0.0.1:1")
    with pytest.raises(TransportError) as refused:
        _connect_to("https", "api.example.test", 443)
    assert "s3cret" not in str(refused.value) and "https_proxy" in str(refused.value)


def test_no_proxy_exempts_a_host(proxied):
    with FakeOpenAI() as server, ForwardingProxy() as proxy:
        proxied.setenv("http_proxy", proxy.url)
        proxied.setenv("no_proxy", "127.0.0.1")
        reply = Transport(timeout=30, max_bytes=1 << 20).exchange("GET", f"{server.url}/models")
    assert reply.status == 200 and proxy.seen == []


def test_https_goes_through_a_connect_tunnel(no_proxy_env):
    # No TLS server here: check the connection that would be opened, without opening it.
    no_proxy_env.setenv("https_proxy", "http://ann:pw@proxy.example.test:3128")
    conn = _connect_to("https", "api.example.test", 443)
    assert (conn.host, conn.port) == ("proxy.example.test", 3128)
    assert (conn._tunnel_host, conn._tunnel_port) == ("api.example.test", 443)
    assert conn._tunnel_headers["Proxy-Authorization"] == "Basic YW5uOnB3"
    assert not conn.forward_proxy   # the request itself travels inside the tunnel
