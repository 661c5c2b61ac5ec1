"""The OpenAI-compatible HTTP backend (vLLM, SGLang, llama.cpp's server, transformers serve,
hosted APIs), over the standard library only (the wire itself: ctxprobe/backends/transport.py).

Requests are retried with exponential backoff and jitter on 429, 5xx, timeouts and dropped
connections, honouring Retry-After; any other failure, and a reply that is not the JSON we
expect, becomes an errored cell instead of stopping the sweep. `--timeout` bounds a whole
request, a reply body is capped (`--max-response-bytes`), and redirects are followed only within
the server's origin.

With `stream` the answer comes as server-sent events (ctxprobe/backends/sse.py) and each cell
gets its time to first token and decode rate; reasoning is taken out of the answer before it is
scored, and a reply cut off before any answer is marked truncated (ctxprobe/backends/reasoning.py).

Secrets: the API key is read from the environment variable the user names, sent only in the
Authorization header to the server's own origin, and scrubbed from anything recorded; the run
row keeps the variable's name, never its value. A server URL that could carry a secret (user:pass@,
a query, a fragment) is refused, so only its scheme, host, port and path are ever stored.
Scoring reads the raw answer; only the stored copy is redacted (`redact`). A key shorter than
MIN_REDACTABLE_KEY characters would corrupt text if replaced wherever it occurs, so recorded text
that contains such a key is withheld whole instead.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import math
import random
import re
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass

from ctxprobe.backends import sse, transport
from ctxprobe.backends.base import CellResult
from ctxprobe.backends.reasoning import answer_of
from ctxprobe.errors import UserError

_TOKENIZE_WORKERS = 8  # /tokenize requests in flight while pre-tokenizing a haystack
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_FINGERPRINT_TEXT = "ctxprobe fingerprint: The quick brown fox, 1234567 jumps; über naïve 東京."
DEFAULT_MAX_RESPONSE_BYTES = 1 << 20   # 1 MiB: answers of --max-new-tokens tokens are far smaller
MIN_REDACTABLE_KEY = 8
REDACTED = "[redacted]"
WITHHELD = ("[withheld: this text contains the API key, which is too short to redact without "
            "changing the text]")


class RequestFailed(Exception):
    """A request that failed for good (after any retries). `status` is None for transport errors;
    `redirect` is set when the server redirected to where ctxprobe does not follow."""

    def __init__(self, message: str, status: int | None = None, *, redirect: bool = False):
        super().__init__(message)
        self.status, self.redirect = status, redirect


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5             # extra attempts after the first
    base: float = 0.5            # seconds before the first retry; doubles each time
    cap: float = 30.0            # longest backoff between attempts
    max_retry_after: float = 120.0  # longest server-requested wait we honour

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        # Full jitter in [0.5, 1.5) x the exponential step keeps concurrent workers apart.
        return min(self.cap, self.base * 2**attempt) * (0.5 + random.random())


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when.timestamp() - time.time())


# -- secrets in what the user typed ------------------------------------------------------

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Prefixes of API keys and tokens as providers issue them (OpenAI's sk- fails _ENV_NAME already).
_KEY_PREFIXES = ("sk_", "gsk_", "hf_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_",
                 "glpat", "xox", "AKIA", "ASIA", "AIza", "pk_live", "rk_live", "fw_")


def check_server_url(url: str) -> None:
    """Refuse a server URL that could carry a secret: the --model spec and the command line are
    stored as typed, so user:pass@, a query or a fragment would land in the store. One line,
    naming the host only (the rest may be the secret)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "the server"
    if "@" in parts.netloc:
        raise UserError(f"the server URL for {host} holds credentials (user:secret@); remove them and "
                        "pass the API key in an environment variable named by --api-key-env")
    if "?" in url or "#" in url:
        raise UserError(f"the server URL for {host} has a query or fragment (?... or #...), which could "
                        "hold a secret and would be stored: give scheme://host:port/path only, and the "
                        "API key in an environment variable named by --api-key-env")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError("bad server URL: use openai:http://HOST:PORT/v1 (or https://)")


def check_api_key_env(name: str | None, environ) -> None:
    """Refuse a --api-key-env value that looks like a key rather than a variable's name, without
    repeating it (it would be shown, and the command line is stored)."""
    if name is None:
        return
    looks_like_key = (
        not _ENV_NAME.fullmatch(name)                       # sk-..., spaces, dots, dashes
        or name.startswith(_KEY_PREFIXES)
        or (len(name) >= 20 and any(c.isdigit() for c in name)
            and any(c.islower() for c in name) and any(c.isupper() for c in name))
        or (len(name) >= 24 and re.fullmatch(r"[0-9a-f]+", name) is not None)  # hex tokens
        or (name not in environ and name in environ.values())  # the value of a set variable
    )
    if looks_like_key:
        raise UserError("--api-key-env takes the NAME of an environment variable that holds the key, "
                        "and the value given looks like a key itself (not shown): export it, e.g. "
                        "MY_KEY=..., and pass --api-key-env MY_KEY")


def check_max_response_bytes(value: int) -> None:
    if not isinstance(value, int) or value < 1024:
        raise UserError(f"--max-response-bytes must be at least 1024, got {value}")


class JsonClient:
    """POST/GET JSON under a whole-request timeout, with the retry policy."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 120.0,
                 policy: RetryPolicy = RetryPolicy(), sleep=None,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES):
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = timeout
        self.policy = policy
        self.stopping = threading.Event()  # set by close(): no new attempts, backoffs cut short
        self._sleep = sleep or self.stopping.wait
        # No proxy: requests go straight to the server's origin, and nowhere else.
        self.transport = transport.Transport(timeout=timeout, max_bytes=max_response_bytes)

    def redact(self, text: str) -> str:
        """Text to record: the key replaced, or the whole text withheld when the key is too short
        to replace without changing other text."""
        key = self._api_key
        if not key or key not in text:
            return text
        return text.replace(key, REDACTED) if len(key) >= MIN_REDACTABLE_KEY else WITHHELD

    def request(self, path: str, payload: dict | None = None, *, retries: int | None = None) -> dict:
        """The decoded JSON reply of `path` (relative to the base URL, or an absolute URL)."""
        return self._with_retries(path, lambda url: self._once(url, payload), retries)

    def request_stream(self, path: str, payload: dict, api: str) -> tuple[dict, sse.Timing]:
        """POST a streamed completion request: (the reply assembled into the non-streamed shape,
        its timings, measured from the start of the attempt that succeeded)."""
        return self._with_retries(path, lambda url: self._once(url, payload, stream=api), None)

    def _with_retries(self, path: str, once, retries: int | None):
        url = path if "://" in path else f"{self.base_url}/{path.lstrip('/')}"
        retries = self.policy.retries if retries is None else retries
        for attempt in range(retries + 1):
            if self.stopping.is_set():
                raise RequestFailed(f"request to {transport.shown(url)} cancelled: the sweep is stopping")
            try:
                return once(url)
            except _Retryable as e:
                if self.stopping.is_set():
                    raise RequestFailed(f"request to {transport.shown(url)} cancelled: the sweep is "
                                        "stopping") from None
                if attempt == retries:
                    raise RequestFailed(f"{e.message} (gave up after {retries + 1} attempts)",
                                        e.status) from None
                self._sleep(self.policy.delay(attempt, e.retry_after))
        raise AssertionError("unreachable")

    def _once(self, url: str, payload: dict | None, stream: str | None = None):
        """One attempt: the decoded JSON reply; with stream (the api: chat or completions), the
        streamed reply assembled, and its timings."""
        headers = {"Accept": "text/event-stream" if stream else "application/json"}
        data = None
        if payload is not None:
            data = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        where = transport.shown(url)
        started = time.perf_counter()
        try:
            reply = self.transport.exchange("POST" if payload is not None else "GET", url, data, headers,
                                            stream=stream is not None)
            if reply.lines is not None:
                with contextlib.closing(reply.lines):
                    if "event-stream" in (reply.headers.get("Content-Type") or ""):
                        return sse.assemble(reply.lines, stream, started)
                    body = b"".join(reply.lines)  # a server that ignored "stream": one JSON reply
                return self._decoded(body, where), sse.unstreamed(started)
        except sse.StreamError as e:
            raise RequestFailed(self.redact(f"{e} (from {where})")) from None
        except transport.Redirected as e:
            raise RequestFailed(self.redact(str(e)), e.status, redirect=True) from None
        except transport.TransportError as e:  # timeouts, refused/dropped connections, too large
            if e.retryable:
                raise _Retryable(self.redact(f"request to {where} failed: {e}"), None, None) from None
            raise RequestFailed(self.redact(str(e))) from None
        if not 200 <= reply.status < 300:
            detail = self.redact(reply.body.decode(errors="replace"))[:300]  # redact, then cut
            message = f"HTTP {reply.status} from {where}: {detail}".strip()
            if reply.status in RETRY_STATUSES:
                raise _Retryable(message, reply.status,
                                 parse_retry_after(reply.headers.get("Retry-After")))
            raise RequestFailed(message, reply.status)
        return self._decoded(reply.body, where)

    def _decoded(self, body: bytes, where: str):
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            start = self.redact(body.decode(errors="replace"))[:120]
            raise RequestFailed(f"malformed JSON from {where}: {start!r}") from None

    def close(self) -> None:
        self.stopping.set()
        self.transport.close()


class _Retryable(Exception):
    def __init__(self, message: str, status: int | None, retry_after: float | None):
        self.message, self.status, self.retry_after = message, status, retry_after


class RemoteTokenizer:
    """The probes tokenizer protocol over a server's /tokenize and /detokenize.

    `style` is "vllm" ({"model", "prompt"} -> {"tokens"}) or "llama.cpp" ({"content"} ->
    {"tokens"}). Encodings are cached: a haystack's sentences recur across cells.

    probes caches haystack pools by tokenizer fingerprint and keeps the first tokenizer object
    it saw, which may outlive its server (several runs in one process). Equal fingerprints mean
    equal tokenization, so every instance sends its requests through the newest instance with
    its fingerprint (`_newest`), whose server is the one alive.
    """

    _newest: dict[str, "RemoteTokenizer"] = {}

    def __init__(self, client: JsonClient, root_url: str, model: str, style: str):
        self.client, self.root_url, self.model, self.style = client, root_url, model, style
        self.name = f"server:{model}"
        self.vocab_size = None  # servers do not report it
        self._cache: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        digest = hashlib.sha256(json.dumps([self.name, self._tokenize(_FINGERPRINT_TEXT)]).encode())
        self.fingerprint = digest.hexdigest()[:16]
        RemoteTokenizer._newest[self.fingerprint] = self

    def _live(self) -> "RemoteTokenizer":
        return RemoteTokenizer._newest.get(self.fingerprint, self)

    def _tokenize(self, text: str) -> list[int]:
        if self.style == "vllm":
            payload = {"model": self.model, "prompt": text, "add_special_tokens": False}
        else:
            payload = {"content": text, "add_special": False}
        with self._failures_as_user_errors():
            return _token_list(self.client.request(f"{self.root_url}/tokenize", payload),
                               f"{self.root_url}/tokenize")

    @contextlib.contextmanager
    def _failures_as_user_errors(self):
        """Probes are built in the sweep's main thread: a server that stops tokenizing (for
        good, after the retries) ends the sweep with one line, not a traceback."""
        try:
            yield
        except RequestFailed as e:
            raise UserError(f"the server's tokenizer failed ({e}); cells finished so far are "
                            "stored: rerun the same command to resume") from None

    def encode(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self._live()._tokenize(text)
            with self._lock:
                self._cache[text] = ids
        return list(ids)

    def encode_units(self, texts: list[str]) -> list[list[int]]:
        """Each text as it tokenizes mid-text: after an anchor whose tokens are then dropped.

        A long haystack has tens of thousands of units and /tokenize takes one text per
        request, so uncached units are sent several at a time.
        """
        anchor = self.encode(".")
        fresh = list(dict.fromkeys(t for t in ("." + x for x in texts) if t not in self._cache))
        if len(fresh) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(_TOKENIZE_WORKERS, len(fresh))) as pool:
                list(pool.map(self.encode, fresh))
        out = []
        for text in texts:
            ids = self.encode("." + text)
            out.append(ids[len(anchor):] if ids[: len(anchor)] == anchor else self.encode(text))
        return out

    def encode_array(self, text: str):
        import numpy as np

        return np.asarray(self.encode(text), dtype=np.int32)

    def decode(self, ids: list[int]) -> str:
        live = self._live()
        if live is not self:
            return live.decode(ids)
        with self._failures_as_user_errors():
            if self.style == "vllm":
                reply = self.client.request(f"{self.root_url}/detokenize",
                                            {"model": self.model, "tokens": [int(i) for i in ids]})
                text = reply.get("prompt") if isinstance(reply, dict) else None
            else:
                reply = self.client.request(f"{self.root_url}/detokenize", {"tokens": [int(i) for i in ids]})
                text = reply.get("content") if isinstance(reply, dict) else None
            if not isinstance(text, str):
                raise RequestFailed(f"malformed /detokenize reply from {self.root_url}")
        return text


def _count(value) -> int | None:
    """A token count from a reply's usage: a non-negative int, else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _token_list(reply, url: str) -> list[int]:
    tokens = reply.get("tokens") if isinstance(reply, dict) else None
    if not isinstance(tokens, list):
        raise RequestFailed(f"malformed /tokenize reply from {url}: no 'tokens' list")
    # llama.cpp can return {"id", "piece"} objects when asked for pieces.
    return [t["id"] if isinstance(t, dict) else int(t) for t in tokens]


class HttpBackend:
    """Answers probes through an OpenAI-compatible chat or completions endpoint."""

    kind = "http"

    def __init__(self, base_url: str, *, served_model: str | None = None, api: str = "chat",
                 api_key_env: str | None = None, tokenizer_path: str | None = None,
                 max_new_tokens: int = 32, concurrency: int = 4, timeout: float = 120.0,
                 retries: int = 5, retry_base: float = 0.5, environ: dict | None = None,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES, sleep=None,
                 stream: bool = False, reasoning_budget: int = 0, list_models: bool = True):
        import os

        environ = os.environ if environ is None else environ
        if api not in ("chat", "completions"):
            raise UserError(f"unknown --api {api!r}: use chat or completions")
        if concurrency < 1:
            raise UserError(f"--concurrency must be at least 1, got {concurrency}")
        if retries < 0:
            raise UserError(f"--retries must be 0 or more, got {retries}")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise UserError(f"--timeout must be a positive, finite number of seconds, got {timeout}")
        if max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
        if not isinstance(reasoning_budget, int) or reasoning_budget < 0:
            raise UserError(f"--reasoning-budget must be 0 or more tokens, got {reasoning_budget}")
        check_max_response_bytes(max_response_bytes)
        check_server_url(base_url)
        check_api_key_env(api_key_env, environ)
        parts = urllib.parse.urlsplit(base_url)
        # A bare host means the usual /v1 prefix.
        self.base_url = urllib.parse.urlunsplit(
            (parts.scheme, parts.netloc, parts.path.rstrip("/") or "/v1", "", ""))
        self.root_url = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        if api_key_env is None and environ.get("OPENAI_API_KEY"):
            api_key_env = "OPENAI_API_KEY"
        api_key = None
        if api_key_env is not None:
            api_key = environ.get(api_key_env)
            if not api_key:
                raise UserError(f"environment variable {api_key_env} (named by --api-key-env) is "
                                "not set; export it or name another variable")
            if len(api_key) < MIN_REDACTABLE_KEY:
                print(f"warning: the API key in {api_key_env} has under {MIN_REDACTABLE_KEY} "
                      "characters, too few to redact from recorded text without changing it; a "
                      "response or error that contains it is stored as withheld", file=sys.stderr)
        self.api, self.max_new_tokens, self.concurrency = api, max_new_tokens, concurrency
        # A thinking model spends tokens before its answer: the request's limit holds both.
        self.stream, self.reasoning_budget = stream, reasoning_budget
        self.max_tokens = max_new_tokens + reasoning_budget
        policy = RetryPolicy(retries=retries, base=retry_base)
        self.client = JsonClient(self.base_url, api_key=api_key, timeout=timeout, policy=policy,
                                 sleep=sleep, max_response_bytes=max_response_bytes)
        # list_models=False (a dry run that names --served-model): no request but /tokenize.
        self.served_model, model_info = (self._pick_model(served_model) if list_models or not served_model
                                         else (served_model, {"id": served_model}))
        self.tokenizer, tokenizer_source = self._pick_tokenizer(tokenizer_path)
        self.model_fingerprint = "server-model:" + json.dumps(model_info, sort_keys=True)
        self.settings = {
            "kind": "http", "base_url": self.base_url, "served_model": self.served_model,
            "api": api, "api_key_env": api_key_env, "tokenizer": tokenizer_source,
            "max_new_tokens": max_new_tokens, "concurrency": concurrency, "timeout": timeout,
            "retries": retries, "max_response_bytes": max_response_bytes,
        }
        self.identity = {"kind": "http", "served_model": self.served_model, "api": api,
                         "max_new_tokens": max_new_tokens}
        if reasoning_budget:   # only when given, so runs from before keep their identity
            self.settings["reasoning_budget"] = self.identity["reasoning_budget"] = reasoning_budget
        if stream:             # how latency is measured, not what is answered: not identity
            self.settings["stream"] = True

    # -- setup ---------------------------------------------------------------------------

    def _pick_model(self, served_model: str | None) -> tuple[str, dict]:
        try:
            reply = self.client.request("models", retries=0)
        except RequestFailed as e:
            if e.redirect:
                raise UserError(f"server {self.base_url}: {e}") from None
            if e.status is None:
                raise UserError(f"cannot reach server {self.base_url}: {e}; start it or fix "
                                "--model openai:URL") from None
            if e.status in (401, 403):
                raise UserError(f"server {self.base_url} refused the API key (HTTP {e.status}); "
                                "check the variable named by --api-key-env") from None
            reply = {}  # some servers have no /models; the user must then name the model
        models = [m for m in (reply.get("data") or []) if isinstance(m, dict) and "id" in m] \
            if isinstance(reply, dict) else []
        if served_model is None:
            if len(models) != 1:
                listed = ", ".join(m["id"] for m in models[:5]) or "none listed"
                raise UserError(f"server {self.base_url} serves {len(models)} models ({listed}); "
                                "name one with --served-model")
            served_model = models[0]["id"]
        info = next((m for m in models if m["id"] == served_model), {"id": served_model})
        keep = {k: info[k] for k in ("id", "root", "owned_by", "created", "max_model_len") if k in info}
        return served_model, keep

    def _pick_tokenizer(self, tokenizer_path: str | None):
        if tokenizer_path is not None:
            from ctxprobe.probes import load_tokenizer

            return load_tokenizer(tokenizer_path), str(tokenizer_path)
        for style, payload in (("vllm", {"model": self.served_model, "prompt": "hi"}),
                               ("llama.cpp", {"content": "hi"})):
            try:
                _token_list(self.client.request(f"{self.root_url}/tokenize", payload, retries=1), "")
            except RequestFailed:
                continue
            tokenizer = RemoteTokenizer(self.client, self.root_url, self.served_model, style)
            return tokenizer, f"server/{style}"
        raise UserError(f"server {self.base_url} has no /tokenize endpoint, so ctxprobe cannot "
                        "build prompts of exact token lengths; pass --tokenizer PATH (the model's "
                        "tokenizer.json or its directory)")

    # -- answering -----------------------------------------------------------------------

    def prepare(self, length: int, samples) -> None:
        """Nothing to plan: the server manages its own memory (and `samples` stay unbuilt)."""

    def run_group(self, probes: list) -> list[CellResult]:
        return [self.ask(p) for p in probes]

    def ask(self, probe) -> CellResult:
        if self.api == "chat":
            path = "chat/completions"
            payload = {"model": self.served_model, "temperature": 0.0, "max_tokens": self.max_tokens,
                       # A conversation probe (mrcr) goes as its messages; the server renders them.
                       "messages": getattr(probe, "messages", None)
                       or [{"role": "user", "content": probe.prompt}]}
        else:
            path = "completions"
            payload = {"model": self.served_model, "temperature": 0.0, "max_tokens": self.max_tokens,
                       "prompt": probe.prompt}
        ours = len(probe.token_ids)
        start = time.perf_counter()
        timing = None
        try:
            if self.stream:
                payload.update(stream=True, stream_options={"include_usage": True})
                reply, timing = self.client.request_stream(path, payload, self.api)
            else:
                reply = self.client.request(path, payload)
            text, fields, finish_reason = self._text_of(reply)
        except RequestFailed as e:
            return CellResult(error=str(e), latency=time.perf_counter() - start, prompt_tokens=ours)
        latency = timing.total if timing is not None else time.perf_counter() - start
        usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
        answer = answer_of(text, fields, finish_reason)
        output = _count(usage.get("completion_tokens"))
        if output is None and timing is not None:
            output = timing.output_tokens
        # The raw answer: the sweep scores it, then stores redact(text).
        return CellResult(response=answer.text, latency=latency, prompt_tokens=ours,
                          server_prompt_tokens=_count(usage.get("prompt_tokens")),
                          finish_reason=answer.finish_reason, truncated=answer.truncated,
                          reasoning_tokens=self._reasoning_tokens(usage, answer.reasoning),
                          output_tokens=output,
                          ttft=timing.ttft if timing is not None else None,
                          decode_rate=timing.decode_rate if timing is not None else None)

    def _reasoning_tokens(self, usage: dict, reasoning: str) -> int | None:
        """The server's count (usage.completion_tokens_details.reasoning_tokens), else the
        reasoning text counted with the run's tokenizer; None for a reply without reasoning."""
        details = usage.get("completion_tokens_details")
        reported = _count(details.get("reasoning_tokens")) if isinstance(details, dict) else None
        if reported is not None:
            return reported
        if not reasoning:
            return None
        try:
            return len(self.tokenizer.encode(reasoning))
        except Exception:  # a tokenizer server that fails now: the count is a detail, the cell stands
            return None

    def _text_of(self, reply) -> tuple[str, dict, str | None]:
        """(text, the message or choice it came in, finish_reason) of a reply."""
        try:
            choice = reply["choices"][0]
            fields = choice["message"] if self.api == "chat" else choice
            text = fields["content"] if self.api == "chat" else fields["text"]
        except (KeyError, IndexError, TypeError):
            raise RequestFailed(f"malformed {self.api} reply: no choices[0] text "
                                f"({self.client.redact(json.dumps(reply))[:120]})") from None
        if text is None:
            text = ""
        if not isinstance(text, str) or not isinstance(fields, dict):
            raise RequestFailed(f"malformed {self.api} reply: text is {type(text).__name__}")
        return text, fields, choice.get("finish_reason") if isinstance(choice, dict) else None

    def redact(self, text: str) -> str:
        """What the store may keep of a response (scored before this, never after)."""
        return self.client.redact(text)

    def close(self) -> None:
        self.client.close()
