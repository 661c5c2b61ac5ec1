"""The end-of-run summary: a depth x length table of mean scores per family, and the
effective context length (the largest length whose mean score stays >= 85%)."""

from __future__ import annotations

from collections import defaultdict

THRESHOLD = 0.85


def format_length(n: int) -> str:
    for unit, size in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def effective_length(cells: list[dict], threshold: float = THRESHOLD) -> int | None:
    """Largest tested length L such that the mean score at every length <= L is >= threshold;
    None when even the shortest length falls below it. Errored cells are left out."""
    from ctxprobe.analysis.effective_length import threshold_length
    from ctxprobe.analysis.summary import values_by_length

    by_length = values_by_length(cells)
    if not by_length:  # every cell errored: no reading
        return None
    lengths = sorted(by_length)
    return threshold_length(lengths, [by_length[n].mean() for n in lengths], threshold=threshold).length


def score_table(cells: list[dict]) -> str:
    """Rows are depths (%), columns lengths; each entry the mean score in percent ('-' if none)."""
    lengths = sorted({c["length"] for c in cells})
    depths = sorted({c["depth"] for c in cells})
    sums, counts = defaultdict(float), defaultdict(int)
    for c in cells:
        if c.get("score") is not None and not c.get("error"):
            sums[c["depth"], c["length"]] += c["score"]
            counts[c["depth"], c["length"]] += 1
    header = ["depth"] + [format_length(n) for n in lengths]
    rows = [header]
    for d in depths:
        row = [f"{d:g}%"]
        for n in lengths:
            k = counts[d, n]
            row.append(f"{100 * sums[d, n] / k:.0f}" if k else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows)


def summarize(cells: list[dict], threshold: float = THRESHOLD) -> str:
    """Per family: the table and its effective length; then the errored-cell count."""
    lines = []
    for family in sorted({c["family"] for c in cells}):
        mine = [c for c in cells if c["family"] == family]
        eff = effective_length(mine, threshold)
        shortest = format_length(min(c["length"] for c in mine))
        if not any(c.get("score") is not None and not c.get("error") for c in mine):
            reading = "no reading: no cell was scored (every cell errored)"
        elif eff is None:
            reading = f"below the shortest length tested ({shortest})"
        else:
            reading = format_length(eff)
        lines += [f"{family}: score (%) by depth and length", score_table(mine),
                  f"{family}: effective length (score >= {threshold:.0%}): {reading}", ""]
    errors = sum(1 for c in cells if c.get("error"))
    if errors:
        lines.append(f"{errors} cell(s) errored; rerun the same command to retry them")
    return "\n".join(lines).rstrip()
