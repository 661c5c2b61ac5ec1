"""Grid specs for sweeps: lengths and depths as the CLI writes them.

Lengths: `1k,2k,4k`, exact integers `1000,3000`, or a geometric range `1k..1M:x2` (both ends
included, each value the previous times the factor, rounded). k = 1024 and M = 1048576, as
RULER counts. Depths (percent): `0,50,100` or a linear range `0..100:11` (eleven points).
"""

from __future__ import annotations

import re

from ctxprobe.errors import UserError

_UNITS = {"": 1, "k": 1024, "K": 1024, "m": 1 << 20, "M": 1 << 20}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")
LENGTH_FORMS = "a list like 1k,2k,4k or 1000,3000, or a geometric range like 1k..1M:x2"
DEPTH_FORMS = "a list like 0,50,100 or a linear range like 0..100:11 (percent, 0 to 100)"


def parse_size(text: str) -> int:
    """'4k' -> 4096, '1M' -> 1048576, '1500' -> 1500; ValueError otherwise."""
    m = _SIZE.match(text)
    if not m:
        raise UserError(f"bad length {text!r}: expected {LENGTH_FORMS}")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if value != int(value) or value < 1:
        raise UserError(f"bad length {text!r}: must be a whole number of tokens >= 1")
    return int(value)


def _dedupe(values):
    seen, out = set(), []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def parse_lengths(spec: str) -> list[int]:
    spec = spec.strip()
    if ".." in spec:
        m = re.fullmatch(r"(.+?)\.\.(.+?):x(\d+(?:\.\d+)?)", spec)
        if not m:
            raise UserError(f"bad lengths {spec!r}: expected {LENGTH_FORMS}")
        lo, hi, factor = parse_size(m.group(1)), parse_size(m.group(2)), float(m.group(3))
        if factor <= 1 or hi < lo:
            raise UserError(f"bad lengths {spec!r}: need start <= end and a factor > 1 "
                            f"({LENGTH_FORMS})")
        out, x = [], float(lo)
        while round(x) <= hi:
            out.append(int(round(x)))
            x *= factor
        return _dedupe(out)
    if not spec:
        raise UserError(f"empty lengths: expected {LENGTH_FORMS}")
    return _dedupe(parse_size(part) for part in spec.split(","))


def _depth(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"bad depths {spec!r}: {text!r} is not a number; expected {DEPTH_FORMS}") from None
    if not 0 <= value <= 100:
        raise UserError(f"bad depths {spec!r}: {text.strip()} is outside 0 to 100; expected {DEPTH_FORMS}")
    return int(value) if value == int(value) else value


def parse_depths(spec: str) -> list[float]:
    spec = spec.strip()
    if ".." in spec:
        m = re.fullmatch(r"(.+?)\.\.(.+?):(\d+)", spec)
        if not m:
            raise UserError(f"bad depths {spec!r}: expected {DEPTH_FORMS}")
        lo, hi, n = _depth(m.group(1), spec), _depth(m.group(2), spec), int(m.group(3))
        if n < 1 or hi < lo:
            raise UserError(f"bad depths {spec!r}: need start <= end and at least one point "
                            f"({DEPTH_FORMS})")
        if n == 1:
            return [lo]
        points = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
        return _dedupe(int(p) if p == int(p) else round(p, 6) for p in points)
    if not spec:
        raise UserError(f"empty depths: expected {DEPTH_FORMS}")
    return _dedupe(_depth(part, spec) for part in spec.split(","))
