"""Grid specs for sweeps: lengths and depths as the CLI writes them.

Lengths: `1k,2k,4k`, exact integers `1000,3000`, or a geometric range `1k..1M:x2` (both ends
included, each value the previous times the factor, rounded). k = 1024 and M = 1048576, as
RULER counts. Depths (percent): `0,50,100` or a linear range `0..100:11` (eleven points).

A grid is refused before any list is built when it would hold more than MAX_CELLS cells
(families x lengths x depths x samples, counted arithmetically from the specs): planning
materialises every cell (about 1.5 s and a few hundred MB at 1M cells) and a million cells
is days of work even at ten cells a second; split a bigger study into runs. A length over
MAX_LENGTH (2^30 tokens, a hundred times the longest context offered today) is refused too:
one probe that long would not fit in memory to be built. Seeds are
stored as SQLite INTEGERs, so they must fit in a signed 64-bit integer.
"""

from __future__ import annotations

import math
import numbers
import re

from ctxprobe.errors import UserError
from ctxprobe.units import parse_tokens

LENGTH_FORMS = "a list like 1k,2k,4k or 1000,3000, or a geometric range like 1k..1M:x2"
DEPTH_FORMS = "a list like 0,50,100 or a linear range like 0..100:11 (percent, 0 to 100)"
MAX_CELLS = 1_000_000
MAX_LENGTH = 1 << 30
MAX_SEED = 2**63 - 1   # the largest SQLite INTEGER


def _length(text: str) -> int:
    return parse_tokens(text, None, expected=LENGTH_FORMS)


def _dedupe(values):
    seen, out = set(), []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def _at_most_max_length(length: int, spec: str) -> int:
    if length > MAX_LENGTH:
        raise UserError(f"length {length:,} in {spec!r} is more than {MAX_LENGTH:,} tokens (1024M), "
                        "the longest probe ctxprobe builds")
    return length


def parse_lengths(spec: str) -> list[int]:
    spec = spec.strip()
    if ".." in spec:
        m = re.fullmatch(r"(.+?)\.\.(.+?):x(\d+(?:\.\d+)?)", spec)
        if not m:
            raise UserError(f"bad lengths {spec!r}: expected {LENGTH_FORMS}")
        lo, hi, factor = _length(m.group(1)), _length(m.group(2)), float(m.group(3))
        if factor <= 1 or hi < lo:
            raise UserError(f"bad lengths {spec!r}: need start <= end and a factor > 1 "
                            f"({LENGTH_FORMS})")
        _at_most_max_length(hi, spec)
        # Counted before any list is built (a factor near 1 makes millions of steps): the
        # distinct lengths are at most the steps and at most hi - lo + 1.
        steps = math.floor(math.log((hi + 0.5) / lo) / math.log(factor)) + 1
        count = min(steps, hi - lo + 1)
        if count > MAX_CELLS:
            raise UserError(f"lengths {spec!r} make {count:,} lengths, so at least {count:,} cells, "
                            f"more than the {MAX_CELLS:,} one run may hold; use a larger factor")
        if steps > MAX_CELLS:
            raise UserError(f"lengths {spec!r} take {steps:,} steps of x{m.group(3)} (most rounding "
                            f"to the same length), more than {MAX_CELLS:,}; use a larger factor")
        out, x = [], float(lo)
        while round(x) <= hi:
            out.append(int(round(x)))
            x *= factor
        return _dedupe(out)
    if not spec:
        raise UserError(f"empty lengths: expected {LENGTH_FORMS}")
    return _dedupe(_at_most_max_length(_length(part), spec) for part in spec.split(","))


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
        if n > MAX_CELLS:
            raise UserError(f"depths {spec!r} make {n:,} depths, so at least {n:,} cells, more "
                            f"than the {MAX_CELLS:,} one run may hold; use fewer points")
        if n == 1:
            return [lo]
        points = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
        return _dedupe(int(p) if p == int(p) else round(p, 6) for p in points)
    if not spec:
        raise UserError(f"empty depths: expected {DEPTH_FORMS}")
    return _dedupe(_depth(part, spec) for part in spec.split(","))


def check_grid(families, lengths, depths, samples: int) -> int:
    """The number of cells of the grid (duplicates dropped, as plan_cells does); a UserError
    naming that count when it is over MAX_CELLS. Counts only: no list of cells is built."""
    f, n, d = len(set(families)), len(set(lengths)), len(set(depths))
    cells = f * n * d * max(samples, 0)
    if cells > MAX_CELLS:
        raise UserError(f"the grid has {cells:,} cells ({f} probe {'family' if f == 1 else 'families'} "
                        f"x {n} length(s) x {d} depth(s) x {samples:,} sample(s)), more than the "
                        f"{MAX_CELLS:,} one run may hold; split it into several runs")
    return cells


def check_seed(seed) -> int:
    """--seed as stored: a whole number from 0 to MAX_SEED (a signed 64-bit SQLite INTEGER)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed {seed!r} is out of range: use a whole number from 0 to {MAX_SEED} "
                        "(seeds are stored as 64-bit integers)")
    return int(seed)
