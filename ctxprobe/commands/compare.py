"""`ctxprobe compare RUN_A RUN_B` (a paired regression test per context length) and
`ctxprobe baseline RUN -o base.json` (a run frozen to a file that compare accepts as RUN_A)."""

from __future__ import annotations

import os

import click

from ctxprobe.analysis.baseline import read_baseline, write_baseline
from ctxprobe.analysis.compare import METRICS, Comparison, compare as compare_cells
from ctxprobe.commands.options import db_option
from ctxprobe.store import Store


def load_cells(ref: str, db: str) -> tuple[str, list[dict]]:
    """(label, cells) of a baseline file (an existing path) or of a run in the database."""
    if os.path.isfile(ref):
        run, cells = read_baseline(ref)
        return f"{run.get('name', '?')} ({ref})", cells
    if ref.endswith(".json") or "/" in ref or os.sep in ref:   # meant as a file, unless a run has that name
        if os.path.isfile(db):
            with Store(db, readonly=True) as store:
                run = store.find_run(ref)
                if run is not None:
                    return run.name, store.cells(run.id)
        from ctxprobe.errors import UserError

        raise UserError(f"baseline file {ref} does not exist (and no run in {db} has that name); "
                        f"check the path, or write it with `ctxprobe baseline RUN -o {ref}`")
    with Store(db, readonly=True) as store:
        run = store.get_run(ref)
        return run.name, store.cells(run.id)


def format_table(result: Comparison) -> str:
    from ctxprobe.plots.labels import length_label

    score = result.metric == "score"
    value = (lambda v: f"{100 * v:.1f}%") if score else (lambda v: f"{v:.3f}")
    change = (lambda v: f"{100 * v:+.1f}") if score else (lambda v: f"{v:+.3f}")
    header = ["family", "length", "pairs", "A", "B", "B-A" + (" pts" if score else " nats"),
              "test", "p", "p (Holm)", "verdict"]
    rows = []
    for c in result.cells:
        if c.regressed:
            verdict = "REGRESSED"
        elif c.significant:
            verdict = "worse, within --min-drop"
        else:
            verdict = "ok"
        rows.append([c.family, c.length, str(c.pairs), value(c.mean_a), value(c.mean_b),
                     change(c.delta), c.test, f"{c.p:.3g}", f"{c.p_adjusted:.3g}", verdict])
    for m in result.missing:   # a gate failure, in the table where the cell would be
        rows.append([m.family, m.length, "0", value(m.mean_a), "-", "-", "-", "-", "-",
                     f"MISSING: {m.reason}"])
    rows.sort(key=lambda r: (r[0], r[1]))
    rows = [header] + [[r[0], length_label(r[1]), *r[2:]] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


@click.command()
@click.argument("run_a", metavar="RUN_A")
@click.argument("run_b", metavar="RUN_B")
@db_option
@click.option("--alpha", default=0.05, show_default=True, type=float,
              help="Family-wise error rate across all (family, length) cells (Holm).")
@click.option("--min-drop", default=0.05, show_default=True, type=float,
              help="Smallest drop that counts as a regression (score fraction, or nats).")
@click.option("--metric", default="score", show_default=True, type=click.Choice(METRICS),
              help="score: exact McNemar on binary scores; logprob: paired bootstrap.")
@click.option("-o", "--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Also write the B-A delta heatmap (.png or .svg).")
@click.pass_context
def compare(ctx, run_a, run_b, db, alpha, min_drop, metric, plot_path):
    """Paired test, per (family, length), of whether RUN_B is worse than RUN_A on the same
    probes. RUN_A or RUN_B may be a baseline file written by `ctxprobe baseline`.

    Exits 1 when the gate fails: some cell regressed (significant after Holm's correction and
    a drop above --min-drop), or a (family, length) that RUN_A has results for has none in
    RUN_B (no cell there, every cell errored, or none pairing with A's), shown as MISSING in
    the table. Exits 0 otherwise, and 2 on bad input (including two runs that share no probes).

    Example: ctxprobe compare base.json candidate --min-drop 0.05
    """
    label_a, cells_a = load_cells(run_a, db)
    label_b, cells_b = load_cells(run_b, db)
    result = compare_cells(cells_a, cells_b, metric=metric, alpha=alpha, min_drop=min_drop)
    click.echo(f"A = {label_a}\nB = {label_b}")
    click.echo(format_table(result))
    left_out_a = result.unpaired_a - sum(m.cells_a for m in result.missing)  # MISSING rows count apart
    if left_out_a + result.unpaired_b:
        click.echo(f"({left_out_a} cells of A and {result.unpaired_b} of B had no partner "
                   "with the same seed and probe and were left out)")
    from ctxprobe.plots.labels import length_label
    from ctxprobe.plots.style import save

    if plot_path and not result.cells:
        click.echo(f"no pairs to plot: {plot_path} not written")
    elif plot_path:
        from ctxprobe.analysis.figures import delta_figure

        save(delta_figure(result, title=f"{label_b} minus {label_a}",
                          run_name=f"A {label_a}, B {label_b}"), plot_path)
        click.echo(f"wrote {plot_path}")
    regressions = result.regressions
    if regressions:
        where = ", ".join(f"{c.family}@{length_label(c.length)}" for c in regressions)
        click.echo(f"REGRESSION at {where} (alpha {alpha}, min drop {min_drop})")
    if result.missing:
        where = ", ".join(f"{m.family}@{length_label(m.length)} ({m.reason})" for m in result.missing)
        click.echo(f"MISSING in B at {where}: B has no result where A has one")
    if result.failed:
        ctx.exit(1)
    click.echo(f"no regression (alpha {alpha}, min drop {min_drop})")


@click.command()
@click.argument("run_ref", metavar="RUN")
@db_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Baseline JSON file to write.")
def baseline(run_ref, db, output):
    """Export RUN's provenance and cells to a JSON file that `ctxprobe compare` accepts in place
    of a run, so a CI job can commit it and gate later runs against it.

    Example: ctxprobe baseline llama-8b-v1 -o base.json
    """
    with Store(db, readonly=True) as store:
        run = store.get_run(run_ref)
        cells = store.cells(run.id)
    write_baseline(output, run, cells)
    click.echo(f"wrote {output} ({len(cells)} cells of run {run.name})")


COMMANDS = [compare, baseline]
