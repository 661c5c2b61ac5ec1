"""One HTTP exchange under a deadline, on http.client: what the HTTP backend sends and reads.

- `timeout` bounds the whole exchange (connect, send, wait, read, redirects): every socket
  operation gets what is left of one deadline, so a server that drips a byte at a time cannot
  hold a request past it.
- A body longer than the cap is not read past it (TooLarge for a 2xx reply; the first part of
  an error reply is kept for its message). No Accept-Encoding is sent, so nothing is inflated.
- A redirect is followed only within the origin (scheme, host, port) of the request, at most
  MAX_REDIRECTS times, so the Authorization header never reaches another origin. 307 and 308
  repeat the request; 301, 302 and 303 are followed for GET only (they turn a POST into a GET,
  which no completion endpoint answers).
- One persistent connection per thread and origin (keep-alive). An idle connection that the
  server closed is readable (EOF): it is noticed before reuse and replaced, so a request is
  never sent twice on our initiative.
- `stream=True` hands a 2xx body over line by line as it arrives (server-sent events): the same
  deadline bounds the whole stream and the same cap counts every byte of it.
- Proxies come from the environment as urllib reads them (`http_proxy`, `https_proxy`,
  `no_proxy`): an http URL is sent to the proxy in absolute form; an https one goes through a
  CONNECT tunnel, so the proxy never sees the request or its Authorization header.
"""

from __future__ import annotations

import base64
import http.client
import io
import select
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

MAX_REDIRECTS = 3
REDIRECTS = frozenset({301, 302, 303, 307, 308})
ERROR_BODY_BYTES = 64 * 1024  # of a non-2xx reply: enough for its message


class TransportError(Exception):
    """A failed exchange; `retryable` says whether trying again may help."""

    retryable = False


class TimedOut(TransportError):
    retryable = True


class Dropped(TransportError):
    """Refused, reset or closed connections, truncated replies: the retry policy's business."""

    retryable = True


class TooLarge(TransportError):
    pass


class Redirected(TransportError):
    """A redirect that is not followed (another origin, a POST moved, too many hops)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    url: str     # where it came from, after same-origin redirects
    lines: Iterator[bytes] | None = None   # stream=True and 2xx: the body, line by line (body empty)


def origin_of(url: str) -> tuple[str, str, int]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def shown(url: str) -> str:
    """A URL for messages: scheme, host, port and path, never a query (it may hold a secret)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


class Transport:
    """Thread-safe; each thread gets its own connection per origin."""

    def __init__(self, *, timeout: float, max_bytes: int):
        self.timeout, self.max_bytes = timeout, max_bytes
        self._lock = threading.Lock()
        self._pool: dict[tuple[threading.Thread, tuple], http.client.HTTPConnection] = {}

    def exchange(self, method: str, url: str, body: bytes | None = None,
                 headers: dict | None = None, *, stream: bool = False) -> Reply:
        """One request and its reply. With stream=True a 2xx reply's body is not read here: its
        `lines` yield it as it arrives (read them to the end, or close() them to drop the
        connection); any other reply is read whole as usual."""
        deadline = time.monotonic() + self.timeout
        first = url
        for _ in range(MAX_REDIRECTS + 1):
            reply = self._one(method, url, body, headers or {}, deadline, stream)
            if reply.status not in REDIRECTS:
                return reply
            target = urllib.parse.urljoin(url, reply.headers.get("Location", ""))
            if origin_of(target) != origin_of(url):
                to = "://".join(origin_of(target)[:2]) + f":{origin_of(target)[2]}"
                raise Redirected(f"HTTP {reply.status} from {shown(url)} redirects to another origin "
                                 f"({to}); not followed, so the API key is not sent there: put the "
                                 "final URL in --model if you trust it", reply.status)
            if reply.status in (301, 302, 303) and method != "GET":
                raise Redirected(f"HTTP {reply.status} from {shown(url)} moves this endpoint to "
                                 f"{shown(target)}; a {method} is not re-sent there as a GET: put the "
                                 "final URL in --model", reply.status)
            url = target
        raise Redirected(f"more than {MAX_REDIRECTS} redirects from {shown(first)}", reply.status)

    def _one(self, method: str, url: str, body, headers: dict, deadline: float,
             stream: bool = False) -> Reply:
        parts = urllib.parse.urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn = self._connection(origin_of(url))
        if conn.forward_proxy:   # a plain-http proxy takes the request in absolute form
            target = urllib.parse.urlunsplit((parts.scheme, parts.netloc, target, "", ""))
        conn.deadline = deadline
        try:
            conn.request(method, target, body=body, headers={**conn.proxy_headers, **headers})
            resp = conn.getresponse()
            ok = 200 <= resp.status < 300
            if ok and stream:
                return Reply(resp.status, resp.headers, b"", url, self._lines(conn, resp, url))
            data, whole = _read_at_most(resp, self.max_bytes if ok else ERROR_BODY_BYTES)
        except TimeoutError:
            conn.close()
            raise TimedOut(f"timed out after {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise Dropped(_reason(e)) from None
        if not whole:
            conn.close()  # the rest of the body is still on the wire: this connection is spent
            if ok:
                raise TooLarge(f"the reply from {shown(url)} is larger than {self.max_bytes} bytes "
                               "(--max-response-bytes); not read further")
        return Reply(resp.status, resp.headers, data, url)

    def _lines(self, conn, resp: http.client.HTTPResponse, url: str) -> Iterator[bytes]:
        """The body line by line under the request's deadline (every read is armed with what is
        left of it) and the byte cap (counted over the whole stream). Leaving early closes the
        connection: the rest of the body would still be on the wire."""
        size, finished = 0, False
        try:
            while True:
                line = resp.readline(self.max_bytes + 1 - size)
                if not line:
                    if resp.length:   # the header promised more than the connection carried
                        raise http.client.IncompleteRead(b"", resp.length)
                    finished = True
                    return
                size += len(line)
                if size > self.max_bytes:
                    raise TooLarge(f"the streamed reply from {shown(url)} is larger than "
                                   f"{self.max_bytes} bytes (--max-response-bytes); not read further")
                yield line
        except TimeoutError:
            raise TimedOut(f"timed out after {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as e:
            raise Dropped(_reason(e)) from None
        finally:
            if not finished:
                conn.close()

    def _connection(self, origin: tuple) -> http.client.HTTPConnection:
        me = threading.current_thread()
        with self._lock:
            for key in [k for k in self._pool if not k[0].is_alive()]:
                self._pool.pop(key).close()      # its thread ended: nobody else uses it
            conn = self._pool.get((me, origin))
            if conn is None:
                conn = self._pool[(me, origin)] = _connect_to(*origin)
        if conn.sock is not None and _closed_by_peer(conn.sock):
            conn.close()                         # a keep-alive connection the server dropped
        return conn

    def close(self) -> None:
        """Close every connection; one in use by another thread is shut down, which ends its
        request at once (Ctrl-C does not wait for replies in flight)."""
        with self._lock:
            pool, self._pool = self._pool, {}
        for conn in pool.values():
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(2)  # SHUT_RDWR
                except OSError:
                    pass
            conn.close()


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _connect_to(scheme: str, host: str, port: int) -> "_DeadlineConnection":
    """A connection to the origin, through the environment's proxy for its scheme if one is set
    and `no_proxy` does not exempt the host."""
    kind = _DeadlineHTTPS if scheme == "https" else _DeadlineHTTP
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme)
    if not proxy or _is_loopback(host) or urllib.request.proxy_bypass_environment(host, proxies):
        return kind(host, port)   # a server on this machine is never reached through a proxy
    parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if parts.scheme != "http" or not parts.hostname:
        raise TransportError(f"the {scheme}_proxy variable names {shown(proxy)}: only http:// "
                             "proxies are supported; unset it or point it at an http proxy")
    auth = {}
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        secret = urllib.parse.unquote(parts.password or "")
        auth["Proxy-Authorization"] = "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()
    conn = kind(parts.hostname, parts.port or 80)
    if scheme == "https":
        conn.set_tunnel(host, port, headers=auth)   # CONNECT: the proxy sees only host:port
    else:
        conn.forward_proxy = True
        conn.proxy_headers = auth
    return conn


def _read_at_most(resp: http.client.HTTPResponse, limit: int) -> tuple[bytes, bool]:
    """(body, whole): at most `limit` bytes of it; whole is False when more was on offer."""
    if resp.length is not None and resp.length > limit:
        return b"", False
    chunks, size = [], 0
    while True:
        chunk = resp.read(min(1 << 16, limit + 1 - size))
        if not chunk:
            if resp.length:  # read(amt) ends quietly where the connection did; the header said more
                raise http.client.IncompleteRead(b"".join(chunks), resp.length)
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], False


def _reason(e: BaseException) -> str:
    if isinstance(e, http.client.IncompleteRead):
        return f"the reply was cut off after {len(e.partial)} bytes"
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection without replying"
    return str(e) or type(e).__name__


def _closed_by_peer(sock) -> bool:
    """An idle keep-alive connection has nothing to read unless the server closed it (EOF)."""
    raw = getattr(sock, "raw", sock)
    try:
        if raw.fileno() < 0:
            return True
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(raw, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([raw], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class _DeadlineConnection:
    """http.client's connection whose socket works to `self.deadline` (time.monotonic())."""

    deadline = 0.0
    forward_proxy = False   # True: requests go to an http proxy in absolute form
    proxy_headers: dict = {}

    def connect(self):
        self.timeout = _left(self.deadline)      # bounds the TCP (and TLS) handshake
        super().connect()
        self.sock = _DeadlineSocket(self.sock, self)


class _DeadlineHTTP(_DeadlineConnection, http.client.HTTPConnection):
    pass


class _DeadlineHTTPS(_DeadlineConnection, http.client.HTTPSConnection):
    pass


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the request's deadline passed")
    return left


class _DeadlineSocket:
    """A connected socket whose every send and receive gets what is left of the deadline.

    http.client reads replies through sock.makefile(); a reply may outlive the connection's
    close() (Connection: close), so the socket closes when its last reader does, as
    socket.socket's own makefile arranges.
    """

    def __init__(self, sock, conn: _DeadlineConnection):
        self.raw, self._conn = sock, conn
        self._readers, self._closing = 0, False

    def arm(self) -> None:
        self.raw.settimeout(_left(self._conn.deadline))

    def sendall(self, data) -> None:
        self.arm()
        self.raw.sendall(data)   # the timeout bounds the whole sendall (Python >= 3.5)

    def makefile(self, mode="rb", *args, **kwargs):
        assert mode == "rb", mode
        self._readers += 1
        return io.BufferedReader(_DeadlineReader(self))

    def release(self) -> None:
        self._readers -= 1
        if self._closing and self._readers <= 0:
            self.raw.close()

    def close(self) -> None:
        self._closing = True
        if self._readers <= 0:
            self.raw.close()

    def __getattr__(self, name):
        return getattr(self.raw, name)


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket):
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._sock.arm()
        return self._sock.raw.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            self._sock.release()
        super().close()
