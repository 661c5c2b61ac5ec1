"""Haystacks: streams of text units (sentences), each tokenized once, read by prefix sums.

A `UnitPool` holds distinct unit texts and their token ids as one flat array (tokenized once
per tokenizer). A `Haystack` is a pool plus an order: the stream of pool indices for a given
(seed, sample). The stream does not depend on length or depth, so cells of one sample share a
context prefix. Kinds:
  procedural (default)  seeded prose from probes/prose.py; blocks of seeded permutations
  noise                 one group of sentences repeated (RULER's control)
  coherent              seeded scenes whose sentences follow one another (story.py), in order
  shuffled              the same sentences as `coherent`, in a seeded random order
  a path                a .txt file or a directory of .txt files, split into sentences, read
                        in order from a seeded start and repeated when shorter than needed
"""

from __future__ import annotations

import hashlib
import random
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import lexical, prose, story

POOL_SIZE = 32768  # distinct procedural sentences per seed (~1.8 MB of text)
STORY_KINDS = {"coherent": "cycle", "shuffled": "shuffle"}   # spec -> how the stream reads the pool
NOISE = [" The grass is green.", " The sky is blue.", " The sun is yellow.", " Here we go.",
         " There and back again."]
_MAX_UNIT_CHARS = 2000


def derive_seed(*parts) -> int:
    """A 64-bit seed from any parts, stable across runs and machines (never Python's hash())."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


class UnitPool:
    """Distinct unit texts and their token ids, tokenized lazily (each unit once, when a stream
    first reaches it): flat ids [N_tokens], and per unit its start in flat and its length."""

    def __init__(self, texts: list[str], tokenizer):
        self.texts = np.array(texts, dtype=object)
        self.tokenizer = tokenizer
        self.lengths = np.full(len(texts), -1, dtype=np.int64)   # -1: not tokenized yet
        self.starts = np.zeros(len(texts), dtype=np.int64)
        self.flat = np.zeros(0, dtype=np.int32)

    def __len__(self):
        return len(self.lengths)

    def ensure(self, order: np.ndarray) -> None:
        """Tokenize the units of `order` not seen yet, in one batch."""
        missing = np.unique(order[self.lengths[order] < 0]) if len(order) else order
        if not len(missing):
            return
        ids = self.tokenizer.encode_units(self.texts[missing].tolist())
        lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        if (lens == 0).any():
            raise ValueError("a haystack unit tokenized to zero tokens; check the tokenizer")
        self.starts[missing] = len(self.flat) + np.cumsum(lens) - lens
        self.lengths[missing] = lens
        chunk = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(lens.sum()))
        self.flat = np.concatenate([self.flat, chunk])

    def lengths_of(self, order: np.ndarray) -> np.ndarray:
        self.ensure(order)
        return self.lengths[order]

    def unit_ids(self, i: int) -> np.ndarray:
        self.ensure(np.array([i]))
        return self.flat[self.starts[i]:self.starts[i] + self.lengths[i]]

    def gather(self, order: np.ndarray) -> np.ndarray:
        """Token ids of units `order` [n] concatenated, without a Python loop per token."""
        lens = self.lengths_of(order)
        total = int(lens.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int32)
        # Position p of the output reads flat[start(unit) + (p - out_start(unit))].
        out_starts = np.cumsum(lens) - lens
        shift = np.repeat(self.starts[order] - out_starts, lens)
        return self.flat[np.arange(total, dtype=np.int64) + shift]

    def text(self, order: np.ndarray) -> str:
        return "".join(self.texts[order].tolist())


class Haystack:
    """A pool and an order rule. `order(seed, sample, n)` is the first n stream indices."""

    def __init__(self, spec: str, pool: UnitPool, mode: str):
        self.spec, self.pool, self.mode = spec, pool, mode  # mode: "shuffle" | "cycle"

    def order(self, seed: int, sample: int, n: int) -> np.ndarray:
        P = len(self.pool)
        if self.mode == "cycle":
            start = derive_seed("start", seed, sample) % P if P > 1 else 0
            return (start + np.arange(n, dtype=np.int64)) % P
        blocks = [np.random.default_rng(derive_seed("order", self.spec, seed, sample, b))
                  .permutation(P) for b in range(-(-n // P))]
        return np.concatenate(blocks)[:n] if blocks else np.zeros(0, dtype=np.int64)

    def order_covering(self, seed: int, sample: int, budget: int, extra: int) -> np.ndarray:
        """Enough stream indices that their tokens exceed `budget`, plus `extra` more units."""
        probe = self.order(seed, sample, min(len(self.pool), 256))
        mean = max(float(self.pool.lengths_of(probe).mean()), 1e-9)
        n = int(budget / mean) + extra + 1
        while True:
            order = self.order(seed, sample, n)
            cum = np.cumsum(self.pool.lengths_of(order))
            k = int(np.searchsorted(cum, budget, side="right"))
            if k < n and n - k >= extra:
                return order
            n = int(n * 1.25) + extra + 1


def _read_text_file(path: Path) -> str:
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        raise ValueError(f"haystack file {path} looks binary (NUL bytes); pass UTF-8 .txt files")
    try:
        return raw.decode("utf-8-sig")    # a byte-order mark is not text: drop it
    except UnicodeDecodeError as e:
        raise ValueError(
            f"haystack file {path} is not UTF-8 (byte {e.start}); re-encode it as UTF-8"
        ) from None


def split_sentences(text: str) -> list[str]:
    """Whitespace-normalized sentences, each with a leading space; long runs cut by words."""
    units = []
    for sentence in re.split(r"(?<=[.!?])\s+|(?<=[。！？])\s*", " ".join(text.split())):
        while len(sentence) > _MAX_UNIT_CHARS:
            cut = sentence.rfind(" ", 0, _MAX_UNIT_CHARS)
            cut = cut if cut > 0 else _MAX_UNIT_CHARS
            units.append(" " + sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if sentence:
            units.append(" " + sentence)
    return units


def _file_sentences(spec: str) -> list[str]:
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ValueError(f"haystack directory {spec} holds no .txt files; add some or pass a file")
    elif path.is_file():
        files = [path]
    else:
        raise ValueError(
            f"haystack {spec!r} is not a file or directory; pass a .txt file, a directory of "
            ".txt files, or 'noise' (omit it for procedural prose)"
        )
    units = [u for f in files for u in split_sentences(_read_text_file(f))]
    if not units:
        raise ValueError(f"haystack {spec} holds no text; pass a non-empty UTF-8 .txt file")
    return units


@lru_cache(maxsize=32)
def _texts(spec: str | None, seed: int, files_signature=None) -> tuple[tuple[str, ...], str]:
    if spec is None:
        rng = random.Random(derive_seed("prose", seed))
        return tuple(prose.sentences(rng, POOL_SIZE)), "shuffle"
    if spec == "noise":
        return tuple(NOISE), "cycle"
    if spec in STORY_KINDS:
        texts = tuple(story.sentences(random.Random(derive_seed("story", seed)), POOL_SIZE))
        return texts, STORY_KINDS[spec]
    return tuple(_file_sentences(spec)), "cycle"


def _signature(spec: str):
    """(path, size, mtime) of the haystack's files, so an edited file is read again."""
    path = Path(spec)
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path] if path.is_file() else []
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


@lru_cache(maxsize=32)
def _pool(texts: tuple[str, ...], fingerprint: str) -> UnitPool:
    return UnitPool(list(texts), None)


def pool_for(texts, tokenizer) -> UnitPool:
    """A cached UnitPool for these texts and this tokenizer's fingerprint. Equal fingerprints
    mean equal tokenization, so the pool encodes with the tokenizer object of the latest call:
    an earlier one (say, a remote tokenizer whose server is gone) is not kept alive or used."""
    pool = _pool(tuple(texts), tokenizer.fingerprint)
    pool.tokenizer = tokenizer
    return pool


def load_haystack(spec: str | None, seed: int, tokenizer) -> Haystack:
    """The haystack for `spec` (None = procedural, "noise", or a path), tokenized once."""
    if spec is not None:
        spec = str(spec)
        if not spec.strip():   # Path("") is the current directory: never read that by accident
            raise ValueError("haystack is an empty string; pass a .txt file, a directory of .txt "
                             "files, or 'noise' (omit it for procedural prose)")
    if spec in (None, "noise") or spec in STORY_KINDS:
        texts, mode = _texts(spec, 0 if spec == "noise" else seed)
    else:
        texts, mode = _texts(spec, 0, _signature(spec))
    name = "procedural" if spec is None else spec
    return Haystack(name, pool_for(texts, tokenizer), mode)


class FilteredHaystack:
    """A haystack's stream without the units that hold any of some words: a needle's key words
    kept out of the haystack (the nolima family). Same pool, so nothing is tokenized again; the
    stream still does not depend on length or depth."""

    def __init__(self, base: Haystack, banned_stems: set[str], banned_words: set[str] = frozenset()):
        self.base, self.pool, self.spec = base, base.pool, base.spec
        self.banned = units_with(base.pool, banned_stems, banned_words)
        if self.banned.all():
            raise ValueError(f"every sentence of haystack {base.spec} holds one of the words the "
                             "probe must keep out of it; use a larger or another haystack")

    def order_covering(self, seed: int, sample: int, budget: int, extra: int) -> np.ndarray:
        keep = ~self.banned
        mean = max(float(self.pool.lengths_of(np.flatnonzero(keep)[:256]).mean()), 1e-9)
        n = int(budget / mean / max(keep.mean(), 1e-3)) + extra + 1
        while True:
            order = self.base.order(seed, sample, n)
            order = order[keep[order]]
            cum = np.cumsum(self.pool.lengths_of(order))
            k = int(np.searchsorted(cum, budget, side="right"))
            if k < len(order) and len(order) - k >= extra:
                return order
            n = int(n * 1.25) + extra + 1


def units_with(pool: UnitPool, stems: set[str], exact: set[str] = frozenset()) -> np.ndarray:
    """[len(pool)] bool: units holding a word whose stem is in `stems` or that is in `exact`
    (lower-cased words). Reads a word index built once per pool."""
    index = getattr(pool, "_word_index", None)
    if index is None:
        by_word: dict[str, list[int]] = {}
        for i, text in enumerate(pool.texts.tolist()):
            for w in set(lexical.words(text)):
                by_word.setdefault(w, []).append(i)
        by_stem: dict[str, list[int]] = {}
        for w, units in by_word.items():
            if w not in lexical.STOP_WORDS:
                by_stem.setdefault(lexical.stem(w), []).extend(units)
        index = pool._word_index = (by_word, by_stem)
    by_word, by_stem = index
    hit = np.zeros(len(pool), dtype=bool)
    for s in stems:
        hit[by_stem.get(s, [])] = True
    for w in exact:
        hit[by_word.get(w, [])] = True
    return hit
