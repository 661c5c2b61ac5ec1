"""Tokenizers behind one small protocol: encode, decode, name, fingerprint, vocab_size.

Two implementations: `ByteTokenizer` (UTF-8 bytes, needs no files; the default) and
`HFTokenizer` (a `tokenizer.json` through the `tokenizers` library). `encode` never adds
special tokens (BOS, chat markup): those belong to the runner and the chat template.

`encode_units` is what probe assembly uses: it tokenizes text units (sentences that start with
a space) the way they tokenize *inside* a longer text, so unit token counts add up.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

# Units are tokenized after this anchor and the anchor's tokens are stripped, so tokenizers
# that prepend a marker at the start of a string (sentencepiece-style "▁") count a unit as it
# appears mid-text. For byte-level BPE the anchor changes nothing.
_ANCHOR = "."
# What a tokenizer without a fingerprint of its own is fingerprinted by: words, digits, JSON,
# newlines and non-ASCII text, where tokenizers tend to differ.
_FINGERPRINT_TEXT = ('The special magic number for quiet-heron is 7302581.\n\n{"9f1c": "a0"}, '
                     "VAR ABCDE = 12345. Über naïve café, 你好世界。 \t  end")


@runtime_checkable
class Tokenizer(Protocol):
    name: str
    fingerprint: str
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids) -> str: ...


class ByteTokenizer:
    """One token per UTF-8 byte: ids 0..255. Exact, file-free, tokenizer-agnostic lengths."""

    name = "byte"
    fingerprint = "byte-utf8-v1"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def encode_units(self, texts: list[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def __repr__(self):
        return "ByteTokenizer()"


class HFTokenizer:
    """A Hugging Face `tokenizer.json` (BPE, unigram, wordpiece) via the `tokenizers` library."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer as _Tok

        raw = path.read_bytes()
        try:
            self._tok = _Tok.from_str(raw.decode("utf-8"))
        except Exception as e:  # the library raises its own exception types
            raise ValueError(
                f"tokenizer file {path} is not a valid tokenizer.json ({e}); "
                "pass a Hugging Face tokenizer.json or a model directory that holds one"
            ) from None
        # Some tokenizer.json files carry truncation or padding settings (embedding models,
        # fine-tunes): a probe must see every token of its prompt and none added.
        self._tok.no_truncation()
        self._tok.no_padding()
        self.path = path
        # A model's tokenizer.json is named by its directory ("tokenizer.json" given from
        # inside that directory too), any other file by its stem.
        folder = path.resolve().parent.name
        self.name = folder if path.name == "tokenizer.json" and folder else path.stem
        self.fingerprint = "hf-" + hashlib.sha256(raw).hexdigest()[:16]
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self._anchor_ids = self.encode(_ANCHOR)

    def _refused(self, e: Exception) -> ValueError:
        """A file the library loads but cannot encode with (a WordLevel or WordPiece model whose
        unk_token is missing from its vocabulary, say): one message naming the file."""
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return ValueError(f"tokenizer file {self.path} cannot encode text ({reason}); fix the file "
                          "(e.g. add its unk_token to the vocabulary) or pass another tokenizer")

    def encode(self, text: str) -> list[int]:
        try:
            return self._tok.encode(text, add_special_tokens=False).ids
        except Exception as e:  # the library raises its own exception types
            raise self._refused(e) from None

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int32)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def vocabulary_texts(self) -> list[str]:
        """The text of every token alone, decoded in one batch (probes/exactness.py reads it)."""
        ids = sorted(self._tok.get_vocab(with_added_tokens=True).values())
        return self._tok.decode_batch([[i] for i in ids], skip_special_tokens=False)

    def encode_units(self, texts: list[str]) -> list[list[int]]:
        a = self._anchor_ids
        try:
            encs = self._tok.encode_batch([_ANCHOR + t for t in texts], add_special_tokens=False)
        except Exception as e:
            raise self._refused(e) from None
        out = []
        for text, enc in zip(texts, encs):
            ids = enc.ids
            if ids[: len(a)] == a:
                out.append(ids[len(a):])
            else:  # the unit merged into the anchor: fall back to encoding it alone
                out.append(self.encode(text))
        return out

    def __repr__(self):
        return f"HFTokenizer({str(self.path)!r})"


class WrappedTokenizer:
    """Any object with encode(text) -> ids and decode(ids) -> text, given what assembly needs."""

    def __init__(self, inner):
        self.inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)
        self.vocab_size = getattr(inner, "vocab_size", None)
        self.fingerprint = getattr(inner, "fingerprint", None) or self._behaviour_fingerprint()
        self._anchor_ids = list(inner.encode(_ANCHOR))

    def _behaviour_fingerprint(self) -> str:
        # Without a fingerprint of its own, two tokenizers of one class would share haystack
        # pools (cached by fingerprint) and get each other's token ids; so fingerprint what the
        # tokenizer does with a fixed text instead. Stable across processes, unlike id().
        ids = [int(i) for i in self.inner.encode(_FINGERPRINT_TEXT)]
        digest = hashlib.sha256(json.dumps([self.name, self.vocab_size, ids], default=str).encode())
        return "wrapped-" + digest.hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        return list(self.inner.encode(text))

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int32)

    def decode(self, ids) -> str:
        return self.inner.decode([int(i) for i in ids])

    def encode_units(self, texts: list[str]) -> list[list[int]]:
        a, out = self._anchor_ids, []
        for text in texts:
            ids = self.encode(_ANCHOR + text)
            out.append(ids[len(a):] if ids[: len(a)] == a else self.encode(text))
        return out


def as_probe_tokenizer(tok):
    """A tokenizer, a path (or None for bytes), or any encode/decode object -> probe tokenizer."""
    if hasattr(tok, "encode_units"):
        return tok
    if hasattr(tok, "encode") and hasattr(tok, "decode"):
        return WrappedTokenizer(tok)
    return load_tokenizer(tok)


def load_tokenizer(spec: str | Path | None) -> ByteTokenizer | HFTokenizer:
    """None or "byte" -> the built-in byte tokenizer; else a tokenizer.json or a dir with one."""
    if spec is None or str(spec) == "byte":
        return ByteTokenizer()
    path = Path(spec)
    if path.is_dir():
        path = path / "tokenizer.json"
        if not path.is_file():
            raise ValueError(
                f"tokenizer directory {spec} holds no tokenizer.json; "
                "pass a tokenizer.json file, a model directory that holds one, or omit it for bytes"
            )
    elif not path.is_file():
        raise ValueError(
            f"tokenizer file {spec} does not exist; pass a tokenizer.json file or a model "
            "directory that holds one"
        )
    try:
        json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(
            f"tokenizer file {path} is not JSON; pass a Hugging Face tokenizer.json"
        ) from None
    return HFTokenizer(path)
