"""Sizes in and out: memory budgets and token counts read from the user, bytes and counts printed.

Bytes: binary units unless written with a decimal B ('80GiB' = '80G' = 80 x 2^30, '80GB' = 80 x 10^9).
Tokens: k = 1024, M = 1048576, as RULER counts; parse_tokens is the one reader of a token count
(--length, --chunk, each value of --lengths). Printed, a length is labelled as people read it
('4K', '1.5K': ctxprobe.plots.labels); `{:,}` prints an exact token count only where the number
itself matters (a memory plan, a bench line, `inspect`).
"""

from __future__ import annotations

import re

from ctxprobe.errors import UserError

GiB = 1 << 30
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_TOKEN_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20}
TOKEN_FORMS = "a number of tokens like 4096, 4k or 1M (k = 1024, M = 1048576)"


def parse_bytes(text, what: str = "--gpu-memory") -> int:
    """'80GiB', '80G' (binary), '80GB' (decimal), '512MiB', '1.5T' or a plain number of bytes."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)(b?)\s*", str(text).lower())
    if not m:
        raise UserError(f"{what}: cannot read {text!r} as a size; write e.g. 80GiB, 512MiB or 1.5T")
    num, unit, binary, b = m.groups()
    scale = _UNITS[unit] if (binary or not b or not unit) else 1000 ** "kmgt".index(unit) * 1000
    return int(float(num) * scale)


def parse_tokens(text, what: str | None = "--length", *, expected: str = TOKEN_FORMS) -> int:
    """'128k' (131072), '1M' (1048576), '1.5k' (1536), '4096' -> tokens; an int passes as it is.
    UserError, prefixed with `what` (the flag) when given, unless it is a whole number >= 1;
    `expected` says what to write instead of text it cannot read."""
    prefix = f"{what}: " if what else ""
    if isinstance(text, int):
        if text < 1:
            raise UserError(f"{prefix}a prompt needs at least one token, got {text}")
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", str(text))
    if not m:
        raise UserError(f"{prefix}bad length {text!r}: expected {expected}")
    value = float(m.group(1)) * _TOKEN_UNITS[m.group(2).lower()]
    if value != int(value) or value < 1:
        raise UserError(f"{prefix}bad length {text!r}: must be a whole number of tokens >= 1")
    return int(value)


def fmt_bytes(n: float) -> str:
    """1536 -> '1.5 KiB', 1023 -> '1023 B' (binary units, one decimal)."""
    for unit, size in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def human_count(n: int) -> str:
    """A parameter count: 8030261248 -> '8.03B', 17000 -> '17.00K', 999 -> '999'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)
