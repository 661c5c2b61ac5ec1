"""`ctxprobe report RUN`: one self-contained HTML file with everything about a run."""

from __future__ import annotations

import click

from ctxprobe.output_file import output_file
from ctxprobe.store import DEFAULT_PATH, Store


def db_option(f):
    return click.option("--db", "db", default=DEFAULT_PATH, show_default=True,
                        type=click.Path(dir_okay=False), help="Results database.")(f)


@click.command()
@click.argument("run_ref", metavar="RUN")
@db_option
@click.option("-o", "--output", default="report.html", show_default=True,
              type=click.Path(dir_okay=False), help="HTML file to write.")
@click.option("--relative", is_flag=True,
              help="Threshold relative to the run's own score at the shortest lengths.")
@click.option("--threshold", default=0.85, show_default=True, type=float,
              help="Score cutoff for the effective length (fraction).")
def report(run_ref, db, output, relative, threshold):
    """Write a self-contained HTML report of RUN (name or id): provenance, heatmaps, fall-off
    curves, effective lengths and failing examples.

    Example: ctxprobe report llama-8b-niah -o report.html
    """
    from ctxprobe.analysis.report import build_report  # matplotlib loads only when needed

    with Store(db, readonly=True) as store:
        run = store.get_run(run_ref)
        cells = store.cells(run.id)
    html = build_report(run, cells, relative=relative, threshold=threshold)
    with output_file(output) as f:  # whole or not at all: a failure keeps the earlier report
        f.write(html)
    click.echo(f"wrote {output} ({len(cells)} cells of run {run.name})")
