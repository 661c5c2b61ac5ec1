"""Is a rendered prompt exactly its ids? Four checks, from the audit to the cheapest.

An assembled prompt is a chain of pieces, each with ids of its own: the prefix, haystack units
(tokenized once per pool, as they tokenize mid-text), needles, a tail, the suffix. Its ids are
the pieces' ids concatenated. docs/probes.md ("Why the prompt is exact") says why checking
every adjacent *pair* of pieces once is checking the whole prompt; in short: every piece after
the prefix starts with a space followed by a non-space character, a pre-tokenizer decides a
split at a join from the characters around it, and no token of a vocabulary accepted here
reaches across a space that precedes a non-space character (`tokens_stop_at_spaces`).

    full       the whole prompt re-tokenized once (serial in the tokenizer; the audit)
    pairs      every adjacent pair of pieces re-tokenized together, each distinct pair of
               haystack units once per process (remembered per pool), in batches
    sampled    pairs, and then a few windows of the prompt re-tokenized whole (the default):
               a spot check, in real context, of the premise that makes pairs a proof
    junctions  only the pairs where the prompt's parts meet (what assembly itself needs)

A tokenizer whose vocabulary cannot be read (a server's /tokenize, a wrapped object) or whose
tokens may reach across a space gets `full` for `pairs` and `sampled`: up to FULL_VERIFY_MAX
tokens for the unreadable ones, which above that are checked at the junctions only.
"""

from __future__ import annotations

import re
import weakref

import numpy as np

from .tokenizers import ByteTokenizer

MODES = ("full", "pairs", "sampled", "junctions")
DEFAULT_MODE = "sampled"
FULL_VERIFY_MAX = 1 << 20      # unreadable vocabularies: whole-prompt check up to here
RUN_UNITS = 256                # haystack units per re-tokenized run (a batch item)
WINDOW_TOKENS = 512            # tokens per sampled window
_MERGE_GAP = 4                 # unknown pairs this close share one run
_REACHES_ACROSS = re.compile(r"(?s).\s\S")   # a space after the first character, then text

_memos: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # pool -> sorted pair keys
_stop_at_spaces: dict[str, bool] = {}                                # fingerprint -> property


def resolve_mode(verify) -> str:
    """The check to run: a mode name, True (full), False (junctions) or None (the default)."""
    if verify is None:
        return DEFAULT_MODE
    if verify is True or verify is False:
        return "full" if verify else "junctions"
    if verify in MODES:
        return verify
    raise ValueError(f"unknown verify mode {verify!r}; choose one of: {', '.join(MODES)}")


def check(tok, asm, mode: str) -> str | None:
    """None if `asm` passes the check `mode`, else what differs; sets asm.verified to the check
    that ran ("junctions", "pairs", "sampled" or "full")."""
    asm.verified = "junctions"
    problem = junctions(tok, asm)
    if problem is not None or mode == "junctions":
        return problem
    if mode == "full" or not tokens_stop_at_spaces(tok):
        if mode != "full" and not _readable(tok) and len(asm.ids) > FULL_VERIFY_MAX:
            return None
        asm.verified = "full"
        return full(tok, asm)
    problem = unit_pairs(tok, asm)
    asm.verified = "pairs"
    if problem is None and mode == "sampled":
        asm.verified = "sampled"
        problem = windows(tok, asm)
    return problem


# -- the property that makes pairs a proof -----------------------------------------------------

def _readable(tok) -> bool:
    return hasattr(tok, "vocabulary_texts") or isinstance(tok, ByteTokenizer)


def tokens_stop_at_spaces(tok) -> bool:
    """True if no token of the vocabulary holds a whitespace character after its first character
    with a non-whitespace character after it: then no token covers the end of one piece and the
    first word of the next. Bytes: trivially. Vocabularies that cannot be read: False."""
    if isinstance(tok, ByteTokenizer):
        return True
    if not hasattr(tok, "vocabulary_texts"):
        return False
    if tok.fingerprint not in _stop_at_spaces:
        _stop_at_spaces[tok.fingerprint] = not any(
            _REACHES_ACROSS.search(t) for t in tok.vocabulary_texts())
    return _stop_at_spaces[tok.fingerprint]


# -- the checks --------------------------------------------------------------------------------

def _first_mismatch(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.nonzero(a[:n] != b[:n])[0]
    return int(diff[0]) if len(diff) else n


def full(tok, asm) -> str | None:
    """The whole prompt re-tokenized once."""
    got = tok.encode_array(asm.text)
    if len(got) == len(asm.ids) and np.array_equal(got, asm.ids):
        return None
    return (f"{len(got)} tokens instead of {len(asm.ids)}, first difference at token "
            f"{_first_mismatch(got, asm.ids)}")


def junctions(tok, asm) -> str | None:
    """Each join between the prompt's parts, re-tokenized as the two pieces that meet there."""
    segs, pool = asm.segments, asm.pool
    for left, right in zip(segs, segs[1:]):
        lt, rt = left.last_text(pool), right.first_text(pool)
        lids = tok.encode(lt) if left.kind == "prefix" else tok.encode_units([lt])[0]
        rids = tok.encode_units([rt])[0]
        both = tok.encode(lt + rt) if left.kind == "prefix" else tok.encode_units([lt + rt])[0]
        if both != lids + rids:
            return f"a {left.kind}/{right.kind} junction merges tokens"
    return None


class _PairMemo:
    """Keys (left << 32 | right) of haystack unit pairs of one pool known to re-tokenize as
    their two units' ids, sorted."""

    def __init__(self):
        self.keys = np.zeros(0, dtype=np.int64)

    def known(self, keys: np.ndarray) -> np.ndarray:
        at = np.searchsorted(self.keys, keys)
        return (at < len(self.keys)) & (self.keys[np.minimum(at, len(self.keys) - 1)] == keys) \
            if len(self.keys) else np.zeros(len(keys), dtype=bool)

    def add(self, keys: np.ndarray) -> None:
        self.keys = np.union1d(self.keys, keys)


def _pair_keys(order: np.ndarray) -> np.ndarray:
    return (order[:-1].astype(np.int64) << 32) | order[1:].astype(np.int64)


def _runs(marked: np.ndarray, n_units: int) -> list[tuple[int, int]]:
    """Unit ranges [a, b) that hold both units of every marked pair (pair j = units j, j+1),
    nearby pairs in one range, ranges cut to RUN_UNITS units overlapping by one unit."""
    out = []
    starts = np.r_[0, np.nonzero(np.diff(marked) > _MERGE_GAP)[0] + 1]
    for s, e in zip(starts, np.r_[starts[1:], len(marked)]):
        a, b = int(marked[s]), min(n_units, int(marked[e - 1]) + 2)
        while b - a > RUN_UNITS:
            out.append((a, a + RUN_UNITS))
            a += RUN_UNITS - 1
        out.append((a, b))
    return out


def unit_pairs(tok, asm) -> str | None:
    """Every distinct pair of adjacent haystack units not yet known for this pool, re-tokenized
    in runs of neighbouring units (one batch; `tokenizers` spreads it over its threads)."""
    pool = asm.pool
    hay = [s for s in asm.segments if s.order is not None and len(s.order) > 1]
    if not hay or isinstance(tok, ByteTokenizer):   # UTF-8 of a + b is UTF-8 of a, then of b
        return None
    memo = _memos.setdefault(pool, _PairMemo())
    keys = [_pair_keys(s.order) for s in hay]
    flat = np.concatenate(keys)
    unknown = np.nonzero(~memo.known(flat))[0]      # positions of pairs not proven yet
    if not len(unknown):
        return None
    fresh = np.sort(unknown[np.unique(flat[unknown], return_index=True)[1]])   # first of each
    bounds = np.cumsum([0] + [len(k) for k in keys])
    texts, expected, where = [], [], []
    for i, seg in enumerate(hay):
        marked = fresh[(fresh >= bounds[i]) & (fresh < bounds[i + 1])] - bounds[i]
        if not len(marked):
            continue
        offsets = np.r_[0, np.cumsum(pool.lengths[seg.order])]
        for a, b in _runs(marked, len(seg.order)):
            texts.append("".join(pool.texts[seg.order[a:b]].tolist()))
            expected.append(seg.ids[offsets[a]:offsets[b]])
            where.append((seg.order, a, offsets[a:b + 1] - offsets[a]))
    proven = []
    for got, want, (order, a, rel) in zip(tok.encode_units(texts), expected, where):
        got = np.asarray(got, dtype=np.int32)
        if len(got) != len(want) or not np.array_equal(got, want):
            # The first difference falls in the left unit of the pair that merges.
            u = a + int(np.searchsorted(rel, _first_mismatch(got, want), side="right")) - 1
            left, right = pool.texts[order[u]], pool.texts[order[min(u + 1, len(order) - 1)]]
            return f"haystack units merge where {left[-40:]!r} meets {right[:40]!r}"
        proven.append(_pair_keys(order[a:a + len(rel) - 1]))
    memo.add(np.concatenate(proven))
    return None


def _window(asm, start: int, want: int) -> tuple[str, int, int]:
    """(text, first id, end id) of whole pieces covering ids[start : start + want], snapped
    outwards to piece boundaries."""
    pool, parts, first, pos = asm.pool, [], None, 0
    for seg in asm.segments:
        n = len(seg.ids)
        if pos + n <= start:
            pos += n
            continue
        if seg.order is None:
            a_tok, text = pos, seg.text
            end = pos + n
        else:
            offsets = np.r_[0, np.cumsum(pool.lengths[seg.order])]
            a = max(0, int(np.searchsorted(offsets, start - pos, side="right")) - 1)
            b = min(len(seg.order), int(np.searchsorted(offsets, start + want - pos, side="left")))
            b = max(b, a + 1)
            a_tok, end = pos + int(offsets[a]), pos + int(offsets[b])
            text = "".join(pool.texts[seg.order[a:b]].tolist())
        first = a_tok if first is None else first
        parts.append(text)
        pos += n
        if end >= start + want or end < pos:   # filled, or cut inside this haystack run
            return "".join(parts), first, end
    return "".join(parts), first, pos


def windows(tok, asm) -> str | None:
    """A few windows of whole pieces re-tokenized in context: the prompt's start and end, the
    first needle, and one seeded spot; the whole prompt when it is about that short anyway."""
    n = len(asm.ids)
    if n <= 4 * WINDOW_TOKENS:
        return full(tok, asm)
    rng = np.random.default_rng([n, asm.haystack_tokens])
    starts = {0, n - WINDOW_TOKENS, int(rng.integers(0, n - WINDOW_TOKENS))}
    if asm.needle_spans:
        starts.add(max(0, asm.needle_spans[0][0] - WINDOW_TOKENS // 2))
    anchored, spans = [], []
    for start in sorted(starts):
        text, a, b = _window(asm, start, WINDOW_TOKENS)
        if a == 0:
            got = [tok.encode(text)]
        else:
            anchored.append(text)
            got = None
        spans.append((a, b, got))
    encoded = iter(tok.encode_units(anchored))
    for a, b, got in spans:
        ids = np.asarray(got[0] if got is not None else next(encoded), dtype=np.int32)
        want = asm.ids[a:b]
        if len(ids) != len(want) or not np.array_equal(ids, want):
            return (f"tokens {a}..{b} re-tokenize differently in context (first difference at "
                    f"token {a + _first_mismatch(ids, want)})")
    return None
