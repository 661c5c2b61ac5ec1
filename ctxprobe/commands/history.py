"""`ctxprobe history`: effective length and per-length scores across runs, as a table and a chart."""

from __future__ import annotations

from dataclasses import dataclass

import click
import numpy as np

from ctxprobe.analysis.effective_length import EffectiveLength, describe_with_ci, effective_length
from ctxprobe.analysis.summary import usable, values_by_length
from ctxprobe.commands.options import db_option
from ctxprobe.errors import UserError
from ctxprobe.store import Store


@dataclass
class RunPoint:
    """One run's reading: its effective length and mean score per length."""
    name: str
    created: str
    model: str
    cells: int
    eff: EffectiveLength
    score_by_length: dict[int, float]


def collect(store: Store, *, model: str | None, family: str | None, relative: bool,
            threshold: float) -> list[RunPoint]:
    runs = sorted(store.runs(), key=lambda r: (r.created, r.id))
    if model:
        runs = [r for r in runs if model in r.model_spec or model == r.model_fingerprint]
        if not runs:
            known = sorted({r.model_spec for r in store.runs()})
            raise UserError(f"no run in {store.path} has a model matching {model!r} "
                            f"(models: {', '.join(known[:5]) or 'none yet'})")
    points = []
    for run in runs:
        cells = [c for c in usable(store.cells(run.id)) if family is None or c["family"] == family]
        if not cells:
            continue
        by_length = values_by_length(cells)
        eff = effective_length(by_length, threshold=threshold, relative=relative)
        points.append(RunPoint(run.name, run.created, run.model_spec, len(cells), eff,
                               {x: float(v.mean()) for x, v in by_length.items()}))
    if not points:
        what = f" for family {family!r}" if family else ""
        raise UserError(f"no scored cells{what} in {store.path}: run `ctxprobe run` first or check --family")
    return points


def format_table(points: list[RunPoint]) -> str:
    from ctxprobe.plots.labels import length_label

    lengths = sorted({x for p in points for x in p.score_by_length})
    header = ["run", "created", "model", "cells", "threshold rule", "L50 (fit)"] + [length_label(x) for x in lengths]
    rows = [header]
    for p in points:
        rule = p.eff.threshold.length
        rows.append([p.name, p.created, p.model, str(p.cells),
                     length_label(rule) if rule else f"<{length_label(p.eff.tested[0])}",
                     describe_with_ci(p.eff, p.eff.l50, p.eff.l50_ci)]
                    + [f"{100 * p.score_by_length[x]:.0f}%" if x in p.score_by_length else "-" for x in lengths])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


def history_figure(points: list[RunPoint], title: str):
    from ctxprobe import plots
    lengths = sorted({x for p in points for x in p.score_by_length})
    score_RL = np.array([[p.score_by_length.get(x, np.nan) for x in lengths] for p in points])

    def finite(values):  # inf (never fell) and 0 (never reached) cannot sit on a log axis
        return np.array([v if v is not None and 0 < v < np.inf else np.nan for v in values], float)

    def inside(values):  # a reading beyond a run's tested lengths is a bound (below), not a value
        return finite([v if v is not None and p.eff.tested[0] <= v <= p.eff.tested[1] else None
                       for v, p in zip(values, points)])

    def bounds(values, none_means_below: bool):
        out = []
        for v, p in zip(values, points):
            if v is None:
                out.append(("<", p.eff.tested[0]) if none_means_below else None)
            elif v < p.eff.tested[0]:
                out.append(("<", p.eff.tested[0]))
            elif v > p.eff.tested[1]:
                out.append((">", p.eff.tested[1]))
            else:
                out.append(None)
        return out

    rules = [p.eff.threshold.length for p in points]   # None: even the shortest length failed
    l50s = [p.eff.l50 for p in points]                  # None: no fit
    lo = finite([p.eff.l50_ci[0] if p.eff.l50_ci else None for p in points])
    hi = finite([p.eff.l50_ci[1] if p.eff.l50_ci else None for p in points])
    effective = {"threshold rule": (inside(rules), None, None),
                 "L50 (fit, 95% band)": (inside(l50s), lo, hi)}
    beyond = {"threshold rule": bounds(rules, none_means_below=True),
              "L50 (fit, 95% band)": bounds(l50s, none_means_below=False)}
    return plots.history([p.name for p in points], effective, lengths, score_RL, title=title,
                         bounds=beyond)


@click.command()
@db_option
@click.option("--model", help="Only runs whose model spec contains this text (or whose fingerprint equals it).")
@click.option("--family", help="Only this probe family [default: each family apart].")
@click.option("--pool-families", is_flag=True,
              help="One reading over all families' cells together (families differ in difficulty, so "
                   "a pooled length mixes them; off by default).")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Also write a chart (.png or .svg); with several families one per family, named "
                   "OUTPUT-FAMILY.png.")
@click.option("--relative", is_flag=True, help="Threshold relative to each run's shortest-length score.")
@click.option("--threshold", default=0.85, show_default=True, type=float, help="Score cutoff (fraction).")
def history(db, model, family, pool_families, output, relative, threshold):
    """Effective context length and score per length across runs, oldest first; one table (and
    chart) per probe family unless --family picks one or --pool-families pools them.

    Example: ctxprobe history --model llama --family niah -o history.png
    """
    if family and pool_families:
        raise UserError("--family picks one family and --pool-families pools them all: pass one of them")
    with Store(db, readonly=True) as store:
        if family or pool_families:
            readings = {family: collect(store, model=model, family=family, relative=relative,
                                        threshold=threshold)}
        else:
            readings = {f: collect(store, model=model, family=f, relative=relative, threshold=threshold)
                        for f in _families(store, model)}
            if not readings:   # nothing scored: collect says so, naming the database
                collect(store, model=model, family=None, relative=relative, threshold=threshold)
    several = len(readings) > 1
    for i, (name, points) in enumerate(readings.items()):
        if several:
            click.echo(("\n" if i else "") + f"family {name}:")
        click.echo(format_table(points))
    if output:
        from pathlib import Path

        from ctxprobe.plots.style import save

        for name, points in readings.items():
            path = Path(output)
            if several:
                path = path.with_name(f"{path.stem}-{name}{path.suffix}")
            label = name or "all families pooled"
            title = label + (f", model ~ {model}" if model else "")
            save(history_figure(points, title), path)
            click.echo(f"wrote {path}")


def _families(store: Store, model: str | None) -> list[str]:
    """The families with scored cells in the runs that --model selects."""
    runs = [r for r in store.runs() if not model or model in r.model_spec or model == r.model_fingerprint]
    return sorted({c["family"] for r in runs for c in usable(store.cells(r.id))})
