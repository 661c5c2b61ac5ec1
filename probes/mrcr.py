"""mrcr: multi-round coreference in one long chat (after OpenAI's MRCR).

The user asks for many short pieces ("Write a poem about otters.") and the assistant writes
each (procedurally); among them, 1, 2, 4 or 8 *identical* requests ("Write a riddle about
tapirs.") get different replies. The last user turn asks for the i-th reply to that request,
prefixed with a random string. Graded as OpenAI's public MRCR grader does: 0 unless the
response starts with the prefix, else difflib's SequenceMatcher ratio between the response
and the gold reply, both without the prefix (leading whitespace of the response is dropped
first: after a plain "Assistant:" a completion starts with a space). With needles=1 a literal
search for the request finds the answer: that is the literal control.

The conversation is rendered in a chat format (probes/chat.py): a checkpoint's own chat
template for native runs, a plain transcript otherwise; the probe's exact length counts the
whole rendered conversation. Exchanges are the haystack's units; the identical requests are
needles (the asked one at the requested depth, the others before and after it in order); one
filler exchange, sized to the token, closes the stream before the last question, so the
conversation never ends inside a message. Knobs: needles, near_misses (the asked topic in
another format, or the asked format on another topic) and placement.
"""

from __future__ import annotations

import random
import string
from difflib import SequenceMatcher
from functools import lru_cache

import numpy as np

from . import distractors as D
from . import prose
from . import words as W
from .chat import TRANSCRIPT, ChatFormat
from .haystacks import Haystack, derive_seed, pool_for
from .parts import Parts

POOL = 8192            # distinct exchanges per seed and chat format
NEEDLES = (1, 2, 4, 8)
PREFIX_CHARS = 10
_FIT_TRIES = 8         # stream cut points tried for the filler exchange
_FILLER_CHARS = 12000  # longest filler reply

FORMATS = ("poem", "riddle", "short story", "song", "letter", "diary entry", "fable", "speech",
           "news report", "lullaby", "toast", "limerick")
_LINES = {"poem", "song", "lullaby", "limerick"}          # written as lines
# The asked topics never appear in the other requests.
ASKED_TOPICS = """tapirs lighthouses glaciers hedgehogs volcanoes submarines pelicans
beekeepers windmills chess clocks otters comets deserts kites puffins tortoises bakeries
trains orchids violins snowstorms pirates cathedrals tugboats fireflies canyons typewriters
owls icebergs caravans moths marathons telescopes accordions harbors walruses mapmakers
lanterns""".split()
FILLER_TOPICS = """rivers gardens mountains teachers villages kitchens forests libraries castles
valleys orchards sailors merchants bakers shepherds bottles baskets candles mirrors feathers
hammers pillows shovels blankets chimneys fountains tunnels clouds storms shadows mornings
evenings winters summers journeys promises secrets questions bicycles umbrellas dolphins
giraffes mangoes cactuses bridges markets islands meadows towers cottages anchors compasses
helmets ladders wagons saddles ribbons foxes wolves sparrows ravens badgers
falcons herons beetles spiders rabbits squirrels horses donkeys goats camels elephants lions
tigers zebras penguins seals whales sharks crabs oysters""".split()
REQUESTS = ("Write a {format} about {topic}.", "Please write a {format} about {topic}.",
            "Could you write me a {format} about {topic}?", "I would love a {format} about {topic}.")
FILLER_REQUEST = "Tell me a little about your day, in as many words as you like."
QUESTION = ("Prepend {prefix} to the {nth} (1 indexed) {format} about {topic}. "
            "Do not include any other text in your response.")


def grade(response: str, gold: str, prefix: str) -> float:
    """OpenAI's MRCR grader: 0 without the prefix; else the SequenceMatcher ratio of response and
    gold answer with the prefix removed from both."""
    response = response.lstrip()
    if not response.startswith(prefix):
        return 0.0
    return SequenceMatcher(None, response[len(prefix):], gold.removeprefix(prefix)).ratio()


def ordinal(i: int) -> str:
    suffix = "th" if 10 <= i % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(i % 10, "th")
    return f"{i}{suffix}"


def reply(rng: random.Random, fmt: str, topic: str) -> str:
    """A short piece in `fmt` about `topic`: an opening line and one or two more."""
    opening = rng.choice([f"Here is a {fmt} about {topic}.", f"Of course! A {fmt} about {topic}:",
                          f"Gladly. This {fmt} is about {topic}."])
    adj, noun = lambda: rng.choice(W.ADJECTIVES), lambda: rng.choice(W.NOUNS)
    body = [rng.choice([
        f"The {adj()} {topic} {rng.choice(W.VERBS_PAST)} the {noun()} {rng.choice(W.TIMES)}.",
        f"{rng.choice(W.CONNECTIVES)}, the {topic} {rng.choice(W.VERBS_INTRANSITIVE)} "
        f"{rng.choice(W.PREPOSITIONS)} the {adj()} {noun()}.",
        f"Nobody knew why the {topic} were so {adj()} and {adj()}.",
        f"Every {noun()} remembers the {topic} {rng.choice(W.ADVERBS)}.",
    ]) for _ in range(rng.randint(1, 2))]
    return opening + ("\n" if fmt in _LINES else " ") + ("\n" if fmt in _LINES else " ").join(body)


@lru_cache(maxsize=8)
def exchanges(seed: int, chat: ChatFormat) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The seed's pool: unit texts in `chat` and their (request, reply) pairs."""
    rng = random.Random(derive_seed("mrcr-pool", seed))
    pairs = []
    for _ in range(POOL):
        fmt, topic = rng.choice(FORMATS), rng.choice(FILLER_TOPICS)
        pairs.append((rng.choice(REQUESTS).format(format=fmt, topic=topic), reply(rng, fmt, topic)))
    return tuple(chat.exchange(q, a) for q, a in pairs), tuple(pairs)


class Filler:
    """The last exchange before the question, sized so that the suffix (filler + question) is
    exactly n tokens. Its reply is a prefix of seeded prose, cut by characters, so the count
    grows by about one token per step; memoized, a few counts per probe by bisection."""

    def __init__(self, tokenizer, chat: ChatFormat, ask: str, seed: int, sample: int):
        self.tokenizer, self.chat, self.ask = tokenizer, chat, ask
        rng = random.Random(derive_seed("mrcr-filler", seed, sample))
        text = ""
        while len(text) < _FILLER_CHARS:
            text += "".join(prose.sentences(rng, 64))
        self.prose = text.strip()[:_FILLER_CHARS]
        self._counts: dict[int, int] = {}

    def reply(self, c: int) -> str:
        return self.prose[:c].rstrip()      # templates may trim a message's text

    def text(self, c: int) -> str:
        return self.chat.exchange(FILLER_REQUEST, self.reply(c)) + self.ask

    def count(self, c: int) -> int:
        if c not in self._counts:
            self._counts[c] = len(self.tokenizer.encode_units([self.text(c)])[0])
        return self._counts[c]

    def size_for(self, n: int) -> int | None:
        lo, hi = 0, len(self.prose)
        if not self.count(lo) <= n <= self.count(hi):
            return None
        a, b = lo, hi
        while a < b:
            mid = (a + b) // 2
            a, b = (mid + 1, b) if self.count(mid) < n else (a, mid)
        for c in sorted(range(max(lo, a - 6), min(hi, a + 6) + 1), key=lambda c: abs(c - a)):
            if self.count(c) == n:
                return c
        return None


def _fit(hay: Haystack, filler: Filler, seed: int, sample: int, free: int) -> str:
    """The suffix (filler exchange + question) that, after k whole exchanges, fills `free`
    tokens exactly (free: the probe's tokens less the head and the needles)."""
    smallest = filler.count(0)
    if free < smallest:
        return filler.text(0)                 # too short: assembly names the minimum length
    order = hay.order_covering(seed, sample, free - smallest, 1)
    cum = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(hay.pool.lengths_of(order), out=cum[1:])
    k_top = int(np.searchsorted(cum, free - smallest, side="right")) - 1
    for k in range(k_top, max(-1, k_top - _FIT_TRIES), -1):
        c = filler.size_for(free - int(cum[k]))
        if c is not None:
            return filler.text(c)
    raise ValueError(f"could not close the mrcr conversation at exactly {free} tokens with tokenizer "
                     f"{hay.pool.tokenizer.name}; try another length")


def mrcr(ctx, depth, needles=2, near_misses=0, placement="spread"):
    if needles not in NEEDLES:
        raise ValueError(f"needles={needles} is not supported; use one of {', '.join(map(str, NEEDLES))}")
    D.check(near_misses, placement)
    rng, tok = ctx.rng, ctx.tokenizer
    chat = ctx.chat or TRANSCRIPT
    fmt, topic = rng.choice(FORMATS), rng.choice(ASKED_TOPICS)
    request = rng.choice(REQUESTS).format(format=fmt, topic=topic)
    replies = [reply(rng, fmt, topic) for _ in range(needles)]
    nth = rng.randint(1, needles)
    prefix = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(PREFIX_CHARS))
    fracs = sorted(rng.uniform(0, depth) for _ in range(nth - 1)) + [depth] + \
        sorted(rng.uniform(depth, 1) for _ in range(needles - nth))
    pairs = [(request, r) for r in replies]
    misses = _near_misses(rng, fmt, topic, depth, near_misses, placement)
    pairs += [p for p, _, _ in misses]
    fracs += [f for _, f, _ in misses]
    texts, pool_pairs = exchanges(ctx.seed, chat)
    hay = Haystack("mrcr", pool_for(texts, tok), "shuffle")
    ask = chat.ask(QUESTION.format(prefix=prefix, nth=ordinal(nth), format=fmt, topic=topic))
    needle_texts = [chat.exchange(q, a) for q, a in pairs]
    free = ctx.length - len(tok.encode(chat.prefix)) - sum(len(x) for x in tok.encode_units(needle_texts))
    suffix = _fit(hay, Filler(tok, chat, ask, ctx.seed, ctx.sample), ctx.seed, ctx.sample, free)
    gold = prefix + replies[nth - 1]

    def messages(asm) -> list[dict]:
        """The conversation the assembly renders; checked against it, text for text."""
        out = _messages(asm, hay, tok, chat, pool_pairs, pairs, suffix, ctx.seed, ctx.sample)
        if out is None or chat.render(out) != asm.text:
            raise ValueError(f"could not assemble an exact {ctx.length}-token mrcr conversation with "
                             f"tokenizer {tok.name}: a message would be cut; try another length")
        return out

    return Parts(
        instruction=chat.prefix, question=suffix, answer_prefix="",
        needles=list(zip(needle_texts, fracs)), answers=[gold],
        answer_text=chat.content_prefix + gold, haystack=hay,
        roles=["needle"] * needles + [r for _, _, r in misses], asked=nth - 1,
        grade=lambda response: grade(response, gold, prefix), messages=messages, chat=chat.name,
        meta={"request": request, "instances": needles, "asked_instance": nth, "prefix": prefix})


def _near_misses(rng, fmt, topic, depth, n, placement):
    """((request, reply), depth fraction, role) of n near misses: the asked topic in another
    format and the asked format on another topic, alternately."""
    if not n:
        return []
    out = []
    for i, frac in enumerate(D.depths(rng, n, depth, placement)):
        if i % 2 == 0:
            f, t, role = rng.choice([x for x in FORMATS if x != fmt]), topic, "same-topic"
        else:
            f, t, role = fmt, rng.choice([x for x in ASKED_TOPICS if x != topic]), "same-format"
        out.append(((rng.choice(REQUESTS).format(format=f, topic=t), reply(rng, f, t)), frac, role))
    return out


def _messages(asm, hay, tok, chat, pool_pairs, needle_pairs, suffix, seed, sample) -> list[dict] | None:
    """Exchanges in the order the assembly placed them: the stream's whole exchanges with the
    needles at the unit boundaries their token spans show, then the filler and the question."""
    head = len(tok.encode(chat.prefix))
    spans = asm.needle_spans
    needle_tokens = sum(e - s for s, e in spans)
    hay_tokens = asm.context_end - head - needle_tokens
    order = hay.order_covering(seed, sample, hay_tokens, 1)
    cum = np.concatenate([[0], np.cumsum(hay.pool.lengths_of(order))])
    k = int(np.searchsorted(cum, hay_tokens))
    if k >= len(cum) or cum[k] != hay_tokens:
        return None                          # the haystack ends inside an exchange
    at: dict[int, list[int]] = {}
    placed = 0
    for j in sorted(range(len(spans)), key=lambda j: spans[j][0]):
        before = spans[j][0] - head - placed  # haystack tokens before needle j
        u = int(np.searchsorted(cum, before))
        if u >= len(cum) or cum[u] != before:
            return None
        at.setdefault(u, []).append(j)
        placed += spans[j][1] - spans[j][0]
    pairs = []
    for u in range(k + 1):
        pairs += [needle_pairs[j] for j in at.get(u, [])]
        if u < k:
            pairs.append(pool_pairs[order[u]])
    filler, question = _split_suffix(suffix, chat)
    pairs.append(filler)
    out = [m for q, a in pairs for m in ({"role": "user", "content": q},
                                         {"role": "assistant", "content": a})]
    return out + [{"role": "user", "content": question}]


def _split_suffix(suffix: str, chat: ChatFormat) -> tuple[tuple[str, str], str]:
    """The filler (request, reply) and the question, read back from the suffix text."""
    cp, lead = chat.content_prefix, chat.lead
    body = suffix[len(lead + cp + FILLER_REQUEST + chat.to_assistant + cp):]
    filler_reply, _, rest = body.partition(chat.to_user)
    return (FILLER_REQUEST, filler_reply), rest[len(cp):len(rest) - len(chat.tail)]
