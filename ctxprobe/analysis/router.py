"""Router traces of a run's cells -> the report's reading of the router against position.

Cells split by whether they were answered correctly (score 1: every gold token, or the whole
answer) or not; each group's traces pool into one (loads add). Per bucket, the figure and the
table show the expert-load entropy (the mean over MoE layers of each layer's entropy) and the
mean top-1 margin, per group, and which expert each layer chose most. The biggest change between
two neighbouring buckets (total variation distance of a layer's load shares) is named in words.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ctxprobe.analysis import figures
from ctxprobe.plots import html
from ctxprobe.router_trace import MARGIN, RouterTrace, bucket_label, bucket_start, pooled

CORRECT, WRONG = "answered correctly", "answered wrongly"
LAYERS_SHOWN = 8      # the table names each layer's top expert up to this many MoE layers


@dataclass
class Shift:
    layer: int
    bucket: int           # the load moved most from bucket - 1 to bucket
    distance: float       # total variation distance of the two load shares, in [0, 1]


@dataclass
class RouterReading:
    all: RouterTrace                       # every traced cell
    groups: dict[str, RouterTrace]         # CORRECT / WRONG: those with such cells
    cells: dict[str, int]                  # traced cells per group
    shift: Shift | None                    # the biggest change between neighbouring buckets

    @property
    def buckets(self) -> list[int]:
        return list(range(self.all.n_buckets))

    def starts(self) -> list[int]:
        return [bucket_start(b) for b in self.buckets]


def entropy_B(trace: RouterTrace, n_buckets: int) -> np.ndarray:
    """Mean over layers of each layer's load entropy, per bucket (NaN where no token fell)."""
    h = _padded(trace.entropy_LB(), n_buckets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # an all-NaN bucket's mean is NaN, as meant
        return np.nanmean(h, axis=0)


def margin_B(trace: RouterTrace, n_buckets: int) -> np.ndarray:
    tokens, margin = _padded(trace.tokens_LB, n_buckets, 0), _padded(trace.margin_LB, n_buckets)
    total = tokens.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (np.nan_to_num(margin) * tokens).sum(0) / total, np.nan)


def _padded(a: np.ndarray, n: int, fill=np.nan) -> np.ndarray:
    out = np.full((a.shape[0], n), fill, dtype=float)
    out[:, :a.shape[1]] = a
    return out


def answered_correctly(cell: dict) -> bool:
    return cell.get("score") is not None and cell["score"] >= 1.0


def biggest_shift(trace: RouterTrace) -> Shift | None:
    """The layer and bucket where the load shares move most from the bucket before."""
    total = trace.load_LBE.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = trace.load_LBE / total
    best = None
    for l, layer in enumerate(trace.layers):
        for b in range(1, trace.n_buckets):
            if total[l, b - 1, 0] and total[l, b, 0]:
                d = 0.5 * float(np.abs(share[l, b] - share[l, b - 1]).sum())
                if best is None or d > best.distance + 1e-12:
                    best = Shift(layer, b, d)
    return best


def router_reading(cells: list[dict], traces: dict[tuple, RouterTrace]) -> RouterReading | None:
    """cells: the run's scored cells; traces: Store.router_traces (cell key -> trace). None when
    no scored cell has a trace."""
    groups: dict[str, list[RouterTrace]] = {CORRECT: [], WRONG: []}
    for c in cells:
        t = traces.get((c["family"], c["length"], float(c["depth"]), c["sample"]))
        if t is not None and c.get("score") is not None:
            groups[CORRECT if answered_correctly(c) else WRONG].append(t)
    every = groups[CORRECT] + groups[WRONG]
    if not every:
        return None
    whole = pooled(every)
    return RouterReading(all=whole, groups={k: pooled(v) for k, v in groups.items() if v},
                         cells={k: len(v) for k, v in groups.items() if v}, shift=biggest_shift(whole))


def series(reading: RouterReading) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The figure's numbers: per group, (label with its cell count, entropy_B, margin_B)."""
    B = reading.all.n_buckets
    return [(f"{name} ({reading.cells[name]} cells)", entropy_B(t, B), margin_B(t, B))
            for name, t in reading.groups.items()]


def _number(x: float, digits: int = 2) -> str:
    return "-" if np.isnan(x) else f"{x:.{digits}f}"


def table_rows(reading: RouterReading) -> tuple[list[str], list[list[str]]]:
    """(headers, one row per bucket): positions, tokens, then per group entropy and margin, then
    each layer's most chosen expert and its share of the bucket's choices (all cells)."""
    B, names = reading.all.n_buckets, list(reading.groups)
    per_group = {n: (entropy_B(t, B), margin_B(t, B)) for n, t in reading.groups.items()}
    top, load = reading.all.top_expert_LB(), reading.all.load_LBE
    headers = ["positions", "tokens (all cells)"] + [f"entropy, {n}" for n in names] + [f"margin, {n}" for n in names]
    show_layers = len(reading.all.layers) <= LAYERS_SHOWN
    if show_layers:
        headers.append("most chosen expert by layer (share)")
    rows = []
    for b in range(B):
        row = [bucket_label(b), str(int(reading.all.tokens_LB[:, b].max()))]
        row += [_number(per_group[n][0][b]) for n in names] + [_number(per_group[n][1][b], 3) for n in names]
        if show_layers:
            parts = []
            for l, layer in enumerate(reading.all.layers):
                e = int(top[l, b])
                if e >= 0:
                    parts.append(f"L{layer}: e{e} {load[l, b, e] / load[l, b].sum():.0%}")
            row.append(", ".join(parts) or "-")
        rows.append(row)
    return headers, rows


def shift_text(reading: RouterReading) -> str:
    s = reading.shift
    if s is None:
        return "Too few buckets with tokens to compare neighbours."
    return (f"The load moves most between positions {bucket_label(s.bucket - 1)} and {bucket_label(s.bucket)} "
            f"(layer {s.layer}: total variation distance {s.distance:.2f} between the two buckets' "
            "expert shares; 0 = the same shares, 1 = no expert in common).")


def router_section(cells, traces: dict, *, run_name: str, title: str = "MoE router by position",
                   anchor: str = "router") -> html.Html:
    """The report's part for router traces: what they are, the biggest change in words, the figure
    and a row per bucket; empty when no scored cell has a trace."""
    reading = router_reading(cells, traces)
    if reading is None:
        return html.Html("")
    headers, rows = table_rows(reading)
    figure = figures.router_figure(reading.starts(), series(reading), reading.all.n_experts, run_name=run_name)
    scored, traced = sum(c.get("score") is not None for c in cells), sum(reading.cells.values())
    untraced = (f" {scored - traced} of the {scored} scored cells have no trace (run without --router-trace) "
                "and are left out." if traced < scored else "")
    return html.join(html.heading(title, anchor=anchor), html.paragraph(about(), cls="muted"),
                     html.paragraph(shift_text(reading) + untraced),
                     html.image(figure, "MoE router: expert-load entropy and top-1 margin by prompt position"),
                     html.table(headers, rows))


def about() -> str:
    return ("Recorded during each cell's prompt prefill (ctxprobe run --router-trace), per MoE layer and "
            "position bucket (bucket 0 is position 0, then 1, 2-3, 4-7, ...: each doubles). Entropy: of "
            "the expert load (how many of the bucket's tokens chose each expert), in bits, the mean over "
            "MoE layers; 0 means every token chose the same experts. Margin: mean "
            f"{MARGIN}. Cells split by whether the answer scored 1 (answered correctly) or less.")
