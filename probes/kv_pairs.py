"""Seeded UUIDs for the kv family, vectorised: UUID (seed, what, index) is a pure function of
its arguments, and injective in `index` by construction.

The low 62 bits of a UUID are a keyed bijection of the index on [0, 2**62) (add, multiply by
an odd constant, xor-shift: each step invertible mod 2**62), so two indices never give one
UUID. The high 64 bits are a hash; then the version (4) and variant (10) bits are set, which
touch neither the 62 bits nor the injectivity. Indices carry a domain in bits 60-61 (stream
pairs, asked pair, end pair, fit pair), so keys of different roles never collide either.

N = number of UUIDs; rows are ASCII bytes, ready to use as byte-tokenizer ids.
"""

from __future__ import annotations

import numpy as np

from .haystacks import derive_seed

M62 = (1 << 62) - 1
DOMAIN_SHIFT = 60                      # index = domain << 60 | i, i < 2**60
STREAM, ASKED, END, FIT = 0, 1, 2, 3
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_DASHES = (8, 13, 18, 23)
_HEX_AT = np.array([i for i in range(36) if i not in _DASHES])   # [32] char slots of hex digits
PAIR_PREFIX, PAIR_MID, PAIR_END = b' "', b'": "', b'",'
PAIR_CHARS = len(PAIR_PREFIX) + 36 + len(PAIR_MID) + 36 + len(PAIR_END)   # 80


def _u64(x: int) -> np.uint64:
    return np.uint64(x & ((1 << 64) - 1))


def mix_keys(seed: int, what: str) -> tuple[int, int, int, int, int]:
    """(add0, mul1, mul2, add3, hash key) for one (seed, role); multipliers odd mod 2**62."""
    k = [derive_seed("kv-uuid", what, seed, j) for j in range(5)]
    return k[0] & M62, (k[1] & M62) | 1, (k[2] & M62) | 1, k[3] & M62, k[4]


def mix62(x: np.ndarray, keys) -> np.ndarray:
    """A keyed bijection on [0, 2**62): uint64 [N] -> uint64 [N]."""
    a0, m1, m2, a3, _ = keys
    m = _u64(M62)
    x = (x.astype(np.uint64) + _u64(a0)) & m
    x = (x * _u64(m1)) & m          # uint64 products wrap mod 2**64; & keeps them mod 2**62
    x ^= x >> np.uint64(31)
    x = (x * _u64(m2)) & m
    x ^= x >> np.uint64(29)
    return (x + _u64(a3)) & m


def unmix62(y: np.ndarray, keys) -> np.ndarray:
    """The inverse of mix62 (tests use it to show mix62 is a bijection)."""
    a0, m1, m2, a3, _ = keys
    m = _u64(M62)
    x = (y.astype(np.uint64) - _u64(a3)) & m
    x = _unshift(x, 29)
    x = (x * _u64(pow(m2, -1, 1 << 62))) & m
    x = _unshift(x, 31)
    x = (x * _u64(pow(m1, -1, 1 << 62))) & m
    return (x - _u64(a0)) & m


def _unshift(y: np.ndarray, s: int) -> np.ndarray:
    x = y.copy()
    for _ in range(62 // s + 1):    # x = y ^ (x >> s) converges in ceil(62 / s) steps
        x = y ^ (x >> np.uint64(s))
    return x


def _hash64(x: np.ndarray, key: int) -> np.ndarray:
    """splitmix64's finalizer: any well-mixed 64-bit function will do for the high half."""
    x = x ^ _u64(key)
    x = (x ^ (x >> np.uint64(30))) * _u64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * _u64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uuid_words(seed: int, what: str, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) uint64 [N] of version-4 UUIDs; lo's low 62 bits are mix62(index)."""
    keys = mix_keys(seed, what)
    lo = mix62(np.asarray(index, dtype=np.uint64), keys)
    hi = _hash64(lo, keys[4])
    hi = (hi & ~_u64(0xF000)) | _u64(0x4000)        # version 4: bits 12-15 of the high word
    return hi, lo | _u64(1 << 63)                   # variant 10: bits 63-62 of the low word


def hex_rows(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """uint8 [N, 32]: the 32 lower-case hex digits of each UUID, most significant first."""
    b = np.stack([hi, lo], axis=1).astype(">u8").view(np.uint8).reshape(len(hi), 16)
    nibbles = np.stack([b >> 4, b & 15], axis=2).reshape(len(hi), 32)
    return _HEX[nibbles]


def uuid_rows(seed: int, what: str, index) -> np.ndarray:
    """uint8 [N, 36]: "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx" for each index."""
    hex32 = hex_rows(*uuid_words(seed, what, index))
    rows = np.full((len(hex32), 36), ord("-"), dtype=np.uint8)
    rows[:, _HEX_AT] = hex32
    return rows


def uuid_str(seed: int, what: str, index: int) -> str:
    return uuid_rows(seed, what, np.array([index], dtype=np.uint64))[0].tobytes().decode("ascii")


def pair_rows(seed: int, index: np.ndarray) -> np.ndarray:
    """uint8 [N, 80]: ' "<key>": "<value>",' for each index (key and value UUIDs)."""
    keys, values = uuid_rows(seed, "key", index), uuid_rows(seed, "value", index)
    n = len(index)
    parts = [np.broadcast_to(np.frombuffer(PAIR_PREFIX, np.uint8), (n, 2)), keys,
             np.broadcast_to(np.frombuffer(PAIR_MID, np.uint8), (n, 4)), values,
             np.broadcast_to(np.frombuffer(PAIR_END, np.uint8), (n, 2))]
    return np.concatenate(parts, axis=1)


def pair_texts(rows: np.ndarray) -> list[str]:
    """The rows of pair_rows as str, one per pair, from one decode of the whole buffer."""
    width = rows.shape[1]
    blob = np.ascontiguousarray(rows).tobytes().decode("ascii")
    return [blob[i:i + width] for i in range(0, len(blob), width)]


def key_and_value(seed: int, domain: int, i: int) -> tuple[str, str]:
    index = (domain << DOMAIN_SHIFT) | i
    return uuid_str(seed, "key", index), uuid_str(seed, "value", index)
