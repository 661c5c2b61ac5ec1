"""make_probe: one probe (family, length, depth, seed, sample) as exact token ids and text."""

from __future__ import annotations

import hashlib
import json
import numbers
import random
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .assemble import Assembly, assemble
from .families import get_family
from .haystacks import derive_seed, load_haystack
from .tokenizers import as_probe_tokenizer

GENERATOR_VERSION = 1  # bump when the same inputs would render a different prompt


@dataclass
class BuildContext:
    """What a family builder may read besides depth and its own parameters."""

    rng: random.Random   # seeded by (family, params, seed, sample): same needles at every length
    tokenizer: object
    seed: int
    sample: int
    length: int
    haystack: str | None = None   # the user's haystack spec (None: procedural prose)
    chat: object = None           # a probes.chat.ChatFormat for conversation families; None: plain


class Probe:
    """One probe. prompt == instruction + context + question + answer_prefix, and
    tokenizer.encode(prompt) == token_ids, len(token_ids) == length.
    token_ids == context_ids + question_ids, where context_ids covers instruction + context and
    question_ids covers question + answer_prefix."""

    def __init__(self, *, family, params, length, depth, seed, sample, tokenizer, haystack_name,
                 parts, assembly: Assembly):
        self.family, self.params, self.length, self.depth = family, params, length, depth
        self.seed, self.sample, self.haystack = seed, sample, haystack_name
        self.tokenizer_name, self.tokenizer_fingerprint = tokenizer.name, tokenizer.fingerprint
        self.instruction, self.question = parts.instruction, parts.question
        self.answer_prefix = parts.answer_prefix
        self._asm = assembly
        self.token_array: np.ndarray = assembly.ids           # [length] int32, the fast path
        self.needle_spans: list[tuple[int, int]] = list(assembly.needle_spans)
        self.needle_depths: list[float] = [round(d, 3) for d in assembly.needle_depths]
        # What each needle is: "needle" (asked) or a distractor's kind; the asked needle's depth
        # is the probe's depth.
        self.needle_roles: list[str] = list(parts.roles or ["needle"] * len(self.needle_spans))
        self.actual_depth: float | None = \
            self.needle_depths[parts.asked] if self.needle_depths else None
        self.meta: dict = dict(parts.meta)
        self.meta.pop("min_haystack", None)
        self._grade = parts.grade
        self.chat: str | None = parts.chat        # the chat format a conversation was rendered in
        self.messages: list[dict] | None = parts.messages(assembly) if parts.messages else None
        self.context_end = assembly.context_end
        self.verified = assembly.verified
        answers = list(parts.answers)
        if parts.answers_by_position:
            answers = [a for _, a in sorted(zip(self.needle_spans, answers))]
            self.answer_text = " " + parts.answer_joiner.join(answers)
        else:
            self.answer_text = parts.answer_text
        self.answers: list[str] = answers
        self.hash = self._hash()

    @cached_property
    def prompt(self) -> str:
        return self._asm.text

    @cached_property
    def context(self) -> str:
        """The haystack with its needles: the prompt between instruction and question."""
        end = len(self.prompt) - len(self.question) - len(self.answer_prefix)
        return self.prompt[len(self.instruction):end]

    @cached_property
    def needle_char_spans(self) -> list[tuple[int, int]]:
        """Character [start, end) of each needle in `prompt`, in the order of needle_spans."""
        by_token, tok_pos, char_pos = {}, 0, 0
        for seg in self._asm.segments:
            n_chars = len(seg.text) if seg.order is None else \
                sum(map(len, self._asm.pool.texts[seg.order].tolist()))
            if seg.kind == "needle":
                by_token[tok_pos] = (char_pos, char_pos + n_chars)
            tok_pos, char_pos = tok_pos + len(seg.ids), char_pos + n_chars
        return [by_token[start] for start, _ in self.needle_spans]

    @property
    def distractor_spans(self) -> list[tuple[int, int]]:
        """Token spans of the needles that are not asked, in needle order."""
        return [s for s, r in zip(self.needle_spans, self.needle_roles) if r != "needle"]

    def grade(self, response: str) -> float | None:
        """The family's own score of a response (mrcr's), or None for the standard scores."""
        return None if self._grade is None else float(self._grade(response))

    @cached_property
    def token_ids(self) -> list[int]:
        return self.token_array.tolist()

    @property
    def context_ids(self) -> list[int]:
        return self.token_array[: self.context_end].tolist()

    @property
    def question_ids(self) -> list[int]:
        return self.token_array[self.context_end:].tolist()

    def _hash(self) -> str:
        head = json.dumps([GENERATOR_VERSION, self.family, self.params, self.length, float(self.depth),
                           self.seed, self.sample, self.tokenizer_fingerprint, self._haystack_kind(),
                           self.answers, self.answer_text] + ([self.chat] if self.chat else []),
                          sort_keys=True)
        h = hashlib.sha256(head.encode())
        h.update(np.ascontiguousarray(self.token_array, dtype="<i4").tobytes())
        return h.hexdigest()[:16]

    def _haystack_kind(self) -> str:
        # A user's file enters the hash through its token ids, not its path, so the same
        # text hashes the same on every machine.
        builtin = ("procedural", "noise", "kv", "cwe", "coherent", "shuffled", "mrcr")
        return self.haystack if self.haystack in builtin else "file"

    def to_json(self) -> dict:
        """The export record: everything another harness needs to run and score this probe."""
        return {
            "family": self.family, "params": self.params,
            "length": self.length, "prompt_tokens": len(self.token_array),
            "depth": self.depth, "actual_depth": self.actual_depth,
            "sample": self.sample, "seed": self.seed, "hash": self.hash,
            "tokenizer": self.tokenizer_name, "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "haystack": self.haystack,
            "prompt": self.prompt, "answers": self.answers, "answer_text": self.answer_text,
            "question": self.question, "answer_prefix": self.answer_prefix,
            "context_tokens": self.context_end, "needle_spans": [list(s) for s in self.needle_spans],
            "needle_roles": self.needle_roles, "needle_depths": self.needle_depths,
            **({"meta": self.meta} if self.meta else {}),
            **({"chat": self.chat, "messages": self.messages} if self.messages is not None else {}),
        }

    def __repr__(self):
        return (f"Probe({self.family}, length={self.length}, depth={self.depth}, "
                f"actual_depth={self.actual_depth}, sample={self.sample}, hash={self.hash})")


def _check_int(name, value, lo):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}; got {value!r}")
    return int(value)


def make_probe(family: str, length: int, depth: float, *, seed: int = 0, sample: int = 0,
               tokenizer=None, haystack=None, verify: str | bool | None = None, chat=None,
               **family_params) -> Probe:
    """Build one probe of exactly `length` tokens with its first needle near `depth` percent.

    tokenizer: a probes tokenizer, a path to tokenizer.json (or a dir holding one), or None
    for bytes. haystack: None (seeded procedural prose), "noise", or a .txt file / directory.
    verify: how to prove the prompt re-tokenizes to its ids (probes/exactness.py): "sampled"
    (the default: every pair of adjacent pieces, then a few windows in context), "pairs",
    "full" (the whole prompt re-tokenized once) or "junctions"; True means full, False junctions.
    chat: for conversation families (mrcr), the probes.chat.ChatFormat the conversation is
    rendered in and counted by (a checkpoint's chat template); None: the tokenizer's
    `chat_format` if it has one (a native backend sets it), else a plain transcript. Other
    families ignore it.
    """
    fam = get_family(family)
    params = fam.identity(fam.check_params(family_params))
    length = _check_int("length", length, 1)
    seed, sample = _check_int("seed", seed, 0), _check_int("sample", sample, 0)
    if isinstance(depth, bool) or not isinstance(depth, numbers.Real) or not 0 <= depth <= 100:
        raise ValueError(f"depth must be a percentage from 0 to 100; got {depth!r}")
    tok = as_probe_tokenizer(tokenizer)
    chat = chat if chat is not None else getattr(tok, "chat_format", None)
    rng = random.Random(derive_seed("needles", family, json.dumps(params, sort_keys=True),
                                    seed, sample))
    ctx = BuildContext(rng, tok, seed, sample, length, None if haystack is None else str(haystack), chat)
    parts = fam.build(ctx, depth / 100, **params)
    if parts.haystack is not None:
        hay, hay_name = parts.haystack, parts.haystack.spec
    else:
        hay = load_haystack(haystack, seed, tok)
        hay_name = hay.spec
    asm = assemble(tok, length, hay, seed, sample, parts.instruction,
                   parts.question + parts.answer_prefix, parts.needles, verify=verify,
                   min_haystack=parts.meta.get("min_haystack", 0))
    return Probe(family=family, params=params, length=length, depth=depth, seed=seed,
                 sample=sample, tokenizer=tok, haystack_name=hay_name, parts=parts, assembly=asm)
