"""Exact-length assembly: prefix + haystack with needles + tail + suffix == L tokens.

Token counts come from prefix sums over the haystack's pre-tokenized units, so no step
re-tokenizes the haystack. Units start with a space, which makes tokenization stable at unit
boundaries; the remainder under one unit is a *tail*: a token prefix of the next unit whose
text re-tokenizes to itself. Each candidate is checked at every junction between parts (the
two units that meet there, re-tokenized together), then by the check `verify` names
(probes/exactness.py: every pair of adjacent pieces plus sampled windows by default, the whole
prompt with "full"); on a mismatch the next tail candidate is tried (another unit's prefix, or
up to 3 full units given back to the tail).

Layout of the ids [L]:
  prefix | units[0:b1] | needle 1 | units[b1:b2] | needle 2 | ... | units[..k] | tail | suffix
where b_i is the unit boundary nearest the needle's requested depth.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from . import exactness, prose

_TAIL_CANDIDATES = 8


@dataclass
class Segment:
    """One run of the prompt: literal text with its ids, or a slice of the haystack stream."""

    ids: np.ndarray
    text: str | None = None          # literal text, or None for haystack units
    order: np.ndarray | None = None  # pool indices of haystack units
    kind: str = "text"               # prefix | hay | needle | tail | suffix

    def render(self, pool) -> str:
        return self.text if self.order is None else pool.text(self.order)

    def first_text(self, pool) -> str:
        return self.text if self.order is None else pool.texts[self.order[0]]

    def last_text(self, pool) -> str:
        return self.text if self.order is None else pool.texts[self.order[-1]]


@dataclass
class Assembly:
    ids: np.ndarray                  # [L] int32
    segments: list[Segment]
    pool: object
    needle_spans: list[tuple[int, int]]       # in the order the needles were given
    needle_depths: list[float]                # achieved, percent of haystack tokens before it
    context_end: int                          # ids[:context_end] = prefix + haystack
    haystack_tokens: int
    verified: str = "none"                    # the check passed: exactness.MODES
    _text: str | None = field(default=None, repr=False)

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = "".join(s.render(self.pool) for s in self.segments)
        return self._text


def _as_ids(ids) -> np.ndarray:
    return np.asarray(ids, dtype=np.int32)


def minimum_length(prefix_ids, suffix_ids, needle_ids) -> int:
    return len(prefix_ids) + len(suffix_ids) + sum(len(n) for n in needle_ids)


def assemble(tok, length: int, haystack, seed: int, sample: int, prefix: str, suffix: str,
             needles: list[tuple[str, float]], *, verify: str | bool | None = None,
             min_haystack: int = 0) -> Assembly:
    """Build exactly `length` tokens. needles: (text, depth fraction in [0, 1]) each.
    verify: a check of probes/exactness.py (None: its default; True: full; False: junctions)."""
    mode = exactness.resolve_mode(verify)
    prefix_ids = _as_ids(tok.encode(prefix))
    suffix_ids, *needle_ids = [_as_ids(x) for x in tok.encode_units([suffix] + [t for t, _ in needles])]
    need = minimum_length(prefix_ids, suffix_ids, needle_ids)
    if length < need + min_haystack:
        raise ValueError(
            f"length {length} is too short for this probe: it needs at least "
            f"{need + min_haystack} tokens (instructions, needles, question and answer prefix "
            f"with this tokenizer); ask for {need + min_haystack} tokens or more"
        )
    budget = length - need                      # haystack tokens, tail included
    pool = haystack.pool
    order = haystack.order_covering(seed, sample, budget, extra=_TAIL_CANDIDATES)
    cum = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(pool.lengths_of(order), out=cum[1:])
    k_max = int(np.searchsorted(cum, budget, side="right")) - 1   # full units that fit
    hay_ids = pool.gather(order[:k_max])

    tried, problem = 0, "no tail fits"
    for k, tail_text, tail_ids in _tail_candidates(tok, pool, order, k_max, cum, budget):
        bounds = [_nearest_boundary(cum, k, frac * budget) for _, frac in needles]
        segments, spans = _layout(prefix, prefix_ids, suffix, suffix_ids, needles, needle_ids,
                                  bounds, order, k, cum, hay_ids, tail_text, tail_ids)
        ids = np.concatenate([s.ids for s in segments]).astype(np.int32, copy=False)
        assert len(ids) == length, (len(ids), length)
        depths = [100.0 * cum[b] / budget if budget else 100.0 * f
                  for b, (_, f) in zip(bounds, needles)]
        asm = Assembly(ids, segments, pool, spans, depths,
                       len(prefix_ids) + budget + sum(len(n) for n in needle_ids), budget)
        problem = exactness.check(tok, asm, mode)
        if problem is None:
            return asm
        tried += asm.verified != "junctions"   # a deeper check failed: other tails rarely help
        if tried >= 3:
            break
    raise ValueError(
        f"could not assemble an exact {length}-token prompt with tokenizer {tok.name}: "
        f"the rendered prompt re-tokenizes differently ({problem}); "
        "try another length or the byte tokenizer"
    )


def _nearest_boundary(cum: np.ndarray, k: int, target: float) -> int:
    """The unit boundary b in 0..k whose token offset cum[b] is nearest `target`."""
    i = int(np.searchsorted(cum[: k + 1], target))      # cum[i-1] < target <= cum[i]
    if i > k:
        return k
    if i > 0 and target - cum[i - 1] <= cum[i] - target:
        return i - 1
    return i


def _tail_candidates(tok, pool, order, k_max, cum, budget):
    """(k, text, ids): k full units, then a tail of budget - cum[k] tokens whose text
    re-tokenizes to itself. Giving back up to 3 full units to the tail gives other cut points
    when a junction merges (e.g. "." before the question's newlines in Llama 3's pre-tokenizer);
    cuts inside a unit come before whole units, which end in punctuation."""
    levels = [(k, budget - int(cum[k])) for k in range(k_max, max(-1, k_max - 4), -1)]
    window = range(k_max, min(len(order), k_max + _TAIL_CANDIDATES))
    for k, r in levels:
        if r == 0:
            yield k, "", np.zeros(0, dtype=np.int32)
            continue
        lens = [len(pool.unit_ids(order[j])) for j in window]
        for j in [j for j, n in zip(window, lens) if n > r] + [j for j, n in zip(window, lens) if n == r]:
            for text, tail in _tail_if_stable(tok, pool.unit_ids(order[j])[:r], pool.texts[order[j]]):
                yield k, text, tail
    # A user's text may have no stable cut at r tokens (e.g. bytes inside CJK characters):
    # fall back to r-token runs of built-in ASCII prose, starting at its sentence starts.
    texts = prose.sentences(random.Random(0), 16)
    units = tok.encode_units(texts)
    starts = np.cumsum([0] + [len(u) for u in units])[:-1]
    flat = np.asarray([t for u in units for t in u], dtype=np.int32)
    for k, r in levels:
        run = np.tile(flat, r // len(flat) + 2)
        for i, start in enumerate(starts[:4] if r else []):
            source = "".join(texts[i:]) + "".join(texts) * (r // len(flat) + 1)
            for text, tail in _tail_if_stable(tok, run[start:start + r], source):
                yield k, text, tail


def _tail_if_stable(tok, ids: np.ndarray, source: str):
    """The text of `ids`, a token prefix of `source`, if it re-tokenizes to `ids`. That is
    usually decode(ids); but decoders may drop or add characters (sentencepiece-style ones
    strip the leading space), so prefixes of `source` about as long are tried too."""
    want, text = ids.tolist(), tok.decode(ids)
    n = len(text)
    for cand in dict.fromkeys([text] + [source[:m] for m in (n + 1, n, n - 1, n + 2) if m > 0]):
        if want and tok.encode_units([cand])[0] == want:
            yield cand, ids.copy()
            return


def _layout(prefix, prefix_ids, suffix, suffix_ids, needles, needle_ids, bounds, order, k, cum,
            hay_ids, tail_text, tail_ids):
    segments = [Segment(prefix_ids, prefix, kind="prefix")]
    spans = [None] * len(needles)
    pos, at = len(prefix_ids), 0                 # at: haystack unit index reached
    for i in sorted(range(len(needles)), key=lambda i: (bounds[i], i)):
        b = bounds[i]
        if b > at:
            segments.append(Segment(hay_ids[cum[at]:cum[b]], order=order[at:b], kind="hay"))
            pos += int(cum[b] - cum[at])
            at = b
        segments.append(Segment(needle_ids[i], needles[i][0], kind="needle"))
        spans[i] = (pos, pos + len(needle_ids[i]))
        pos += len(needle_ids[i])
    if k > at:
        segments.append(Segment(hay_ids[cum[at]:cum[k]], order=order[at:k], kind="hay"))
    if len(tail_ids):
        segments.append(Segment(tail_ids, tail_text, kind="tail"))
    segments.append(Segment(suffix_ids, suffix, kind="suffix"))
    return segments, spans
