"""An OpenAI-compatible loopback server that answers by literal lookup, for the tests that show
which probes a literal search can pass.

It reads the question (the last sentence ending in "?" of the last message, or the last
message of a conversation), finds the context sentence (or earlier user message) that shares
the most words with it, lower-cased, stop words aside, not stemmed, rare words weighing more
(the last on ties), and
answers with the text near it: the first capitalised word or number of that sentence that the
question does not hold (one that starts the sentence only if there is no other), or the assistant reply after that user message. "Prepend X to ..."
is obeyed. /tokenize and /detokenize count UTF-8 bytes (vLLM's form), so prompts are exact.
"""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler

from loopback import LoopbackServer, send_json

from ctxprobe.probes.lexical import STOP_WORDS

_WORD = re.compile(r"[\w'-]+")


def _words(text: str) -> set[str]:
    return {w for w in (x.lower().strip("'-") for x in _WORD.findall(text))
            if w and w not in STOP_WORDS} - {"question", "answer"}


def _best(question: str, candidates: list[str]) -> int:
    """Index of the candidate sharing the most words with the question (the last on ties), each shared word
    weighted by 1 / the number of candidates holding it (rare words count more, as in BM25)."""
    q = _words(question)
    shared = [q & _words(c) for c in candidates]
    df = {w: sum(w in s for s in shared) for w in q}
    scores = [round(sum(1 / df[w] for w in s), 9) for s in shared]
    return max(range(len(scores)), key=lambda i: (scores[i], i))


def lookup(messages: list[dict]) -> str:
    last = messages[-1]["content"]
    if len(messages) > 1:                       # a conversation: find the matching request
        users = [i for i, m in enumerate(messages[:-1]) if m["role"] == "user"]
        i = users[_best(last, [messages[i]["content"] for i in users])]
        answer, question = messages[i + 1]["content"], last
    else:
        asked = re.findall(r"(?:St\.|[^.?!\n])*\?", last)
        question = asked[-1] if asked else last.strip().splitlines()[-1]
        context = last[: last.rfind(question)]
        sentences = [s for s in re.split(r"(?<=[.!?])(?<!St\.)\s+|\n+", context) if s.strip()] or [context]
        sentence = sentences[_best(question, sentences)]
        q = _words(question)
        words = _WORD.findall(sentence)
        picks = [(i == 0, w) for i, w in enumerate(words)       # a name, or a number
                 if (w[0].isupper() or any(ch.isdigit() for ch in w))
                 and w.lower() not in q and w.lower() not in STOP_WORDS]
        answer = min(picks, key=lambda p: p[0])[1].rstrip(".,") if picks else sentence
    prefix = re.search(r"Prepend (\S+) to", question)
    return (prefix.group(1) if prefix else "") + answer


class LiteralServer(LoopbackServer):
    def __init__(self, model: str = "literal-lookup"):
        self.model = model
        self.requests: list[dict] = []
        super().__init__()

    def _handler(self):
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, body: dict, status: int = 200):
                send_json(self, status, body)

            def do_GET(self):
                if self.path.split("?")[0] == "/v1/models":
                    return self._reply({"object": "list", "data": [{"id": srv.model, "object": "model"}]})
                self._reply({"error": "not found"}, 404)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                route = self.path.split("?")[0]
                if route == "/tokenize":
                    return self._reply({"tokens": list(body["prompt"].encode())})
                if route == "/detokenize":
                    return self._reply({"prompt": bytes(body["tokens"]).decode(errors="replace")})
                srv.requests.append(body)
                if route == "/v1/chat/completions":
                    text = lookup(body["messages"])
                    return self._reply({"choices": [{"message": {"role": "assistant", "content": text}}]})
                if route == "/v1/completions":
                    return self._reply({"choices": [{"text": lookup([{"role": "user", "content": body["prompt"]}])}]})
                self._reply({"error": "not found"}, 404)

        return Handler
