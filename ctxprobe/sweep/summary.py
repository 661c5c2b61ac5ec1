"""The end-of-run summary: a depth x length table of mean scores per family, and the
effective context length (the largest length whose mean score stays >= 85%). Families whose
literal path is closed (nolima, mrcr and their literal controls) also get the length relative
to the model's own score at the shortest lengths (NoLiMa's rule), each line saying which it is."""

from __future__ import annotations

from collections import defaultdict

from ctxprobe.plots.labels import length_label

THRESHOLD = 0.85


def effective_length(cells: list[dict], threshold: float = THRESHOLD, *,
                     relative: bool = False) -> int | None:
    """Largest tested length L such that the mean score at every length <= L is >= threshold
    (relative=True: threshold x the mean score at the shortest lengths); None when even the
    shortest length falls below it. Errored cells are left out."""
    from ctxprobe.analysis.effective_length import threshold_length
    from ctxprobe.analysis.summary import values_by_length

    by_length = values_by_length(cells)
    if not by_length:  # every cell errored: no reading
        return None
    lengths = sorted(by_length)
    return threshold_length(lengths, [by_length[n].mean() for n in lengths], threshold=threshold,
                            relative=relative).length


def _reading(eff: int | None, shortest: str) -> str:
    return f"below the shortest length tested ({shortest})" if eff is None else length_label(eff)


def _relative_line(family: str, cells: list[dict], threshold: float, shortest: str) -> str:
    from ctxprobe.analysis.effective_length import RELATIVE_RULE, SHORT_LENGTHS, short_score
    from ctxprobe.analysis.summary import values_by_length

    by_length = values_by_length(cells)
    base = short_score([by_length[n].mean() for n in sorted(by_length)])
    rule = RELATIVE_RULE.format(threshold, SHORT_LENGTHS)
    if base <= 0:
        return f"{family}: effective length ({rule}): no reading: it scores 0 at the shortest lengths"
    return (f"{family}: effective length ({rule}; own score {base:.0%}, cutoff {threshold * base:.0%}): "
            f"{_reading(effective_length(cells, threshold, relative=True), shortest)}")


def score_table(cells: list[dict]) -> str:
    """Rows are depths (%), columns lengths; each entry the mean score in percent ('-' if none)."""
    lengths = sorted({c["length"] for c in cells})
    depths = sorted({c["depth"] for c in cells})
    sums, counts = defaultdict(float), defaultdict(int)
    for c in cells:
        if c.get("score") is not None and not c.get("error"):
            sums[c["depth"], c["length"]] += c["score"]
            counts[c["depth"], c["length"]] += 1
    header = ["depth"] + [length_label(n) for n in lengths]
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
    from ctxprobe.analysis.effective_length import ABSOLUTE_RULE, reads_relative

    lines = []
    for family in sorted({c["family"] for c in cells}):
        mine = [c for c in cells if c["family"] == family]
        eff = effective_length(mine, threshold)
        shortest = length_label(min(c["length"] for c in mine))
        scored = any(c.get("score") is not None and not c.get("error") for c in mine)
        reading = _reading(eff, shortest) if scored else "no reading: no cell was scored (every cell errored)"
        lines += [f"{family}: score (%) by depth and length", score_table(mine)]
        if reads_relative(family):   # both readings, each named
            lines.append(f"{family}: effective length ({ABSOLUTE_RULE.format(threshold)}): {reading}")
            if scored:
                lines.append(_relative_line(family, mine, threshold, shortest))
        else:
            lines.append(f"{family}: effective length (score >= {threshold:.0%}): {reading}")
        lines.append("")
    errors = sum(1 for c in cells if c.get("error"))
    if errors:
        lines.append(f"{errors} cell(s) errored; rerun the same command to retry them")
    truncated = sum(1 for c in cells if c.get("truncated") and not c.get("error"))
    if truncated:
        lines.append(f"{truncated} cell(s) truncated: the token limit came before any answer, so they "
                     "are not scored; raise --reasoning-budget (or --max-new-tokens) in a new run")
    return "\n".join(lines).rstrip()
