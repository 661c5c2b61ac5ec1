"""Lengths in tokens as people read them: '4K', '1M', '128K', '1.5K', '5.86K'.

The one way ctxprobe labels a length, in figures, tables, summaries and reports alike. No
matplotlib here, so text output (the end-of-run summary, `compare`, `history`) can label lengths
without loading it. An exact token count, where the number itself matters (a memory plan, a
bench line, `inspect`), is printed with `{:,}` instead (ctxprobe/units.py).
"""

from __future__ import annotations


def length_label(length: float) -> str:
    """Tick label for a length in tokens: powers of two in binary units (4096 -> '4K',
    1048576 -> '1M'), round decimal lengths in decimal units (128000 -> '128K'), others in
    binary units with one decimal (1536 -> '1.5K'); a fitted, non-integer-looking length gets
    three significant figures (25489 -> '24.9K')."""
    if float(length) == int(length) and length > 0:
        n = int(length)
        for base, unit in ((1 << 20, "M"), (1 << 10, "K")):
            if n % base == 0 and (n // base) & (n // base - 1) == 0:
                return f"{n // base}{unit}"
        for base, unit in ((10**6, "M"), (10**3, "K")):
            if n >= base and (10 * n) % base == 0:
                return _tenths(n, base) + unit
        for base, unit in ((1 << 20, "M"), (1 << 10, "K")):
            if n >= base and (10 * n) % base == 0:
                return _tenths(n, base) + unit
        if n < 1024:
            return str(n)
    return approx_length_label(length)


def approx_length_label(length: float) -> str:
    """A measured or fitted length in binary units, three significant figures: '5.86K'."""
    for base, unit in ((1 << 20, "M"), (1 << 10, "K"), (1, "")):
        if length >= base or base == 1:
            value = length / base
            digits = 0 if value >= 100 else 1 if value >= 10 else 2
            return f"{value:.{digits}f}{unit}"
    raise AssertionError("unreachable")


def _tenths(n: int, base: int) -> str:
    return f"{n // base}" if n % base == 0 else f"{n / base:.1f}"
