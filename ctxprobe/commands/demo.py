"""`ctxprobe demo`: a niah sweep on the built-in model, with its table, heatmap and report."""

from __future__ import annotations

import click

from ctxprobe.commands.options import threads_option
from ctxprobe.demo import DEMO_DEPTHS, DEMO_LENGTHS, DEMO_SAMPLES


@click.command()
@click.option("--out", "out_dir", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Directory for ctxprobe.db, demo-heatmap.png and demo-report.html.")
@click.option("--lengths", default=DEMO_LENGTHS, show_default=True, help="Context lengths in tokens.")
@click.option("--depths", default=DEMO_DEPTHS, show_default=True, help="Needle depths in %.")
@click.option("--samples", default=DEMO_SAMPLES, show_default=True, type=int, help="Samples per cell.")
@click.option("--quiet", is_flag=True,
              help="No progress bar, and no line saying that cells are added to an earlier demo run.")
@threads_option
def demo(out_dir, lengths, depths, samples, quiet, threads):
    """Run ctxprobe end to end on the built-in model (CPU, no download): a niah sweep stored in
    SQLite, a depth x length heatmap, an HTML report, and the effective context length measured
    against the one the model was built to have. Rerunning resumes from the store.

    Example: ctxprobe demo --out demo/
    """
    from ctxprobe.demo import DESIGNED_LIMIT, run_demo
    from ctxprobe.plots.labels import length_label

    r = run_demo(out_dir, lengths=lengths, depths=depths, samples=samples, progress=not quiet,
                 threads=threads)
    if r.message and not quiet:
        click.echo(r.message, err=True)
    click.echo(r.summary)
    click.echo("")
    if r.expected_length is None:
        verdict = "the grid has no length below the designed limit"
    elif r.effective_length == r.expected_length:
        verdict = "as designed"
    else:
        verdict = "NOT as designed: please report this as a bug"
    measured = length_label(r.effective_length) if r.effective_length else "none"
    click.echo(f"built-in model: designed limit {DESIGNED_LIMIT:,} tokens; measured effective length "
               f"{measured} ({verdict})")
    click.echo(f"{r.cells_done} cell(s) run in {r.seconds:.1f} s; wrote {r.db}, {r.heatmap}, {r.report}")
    click.echo(f"next: open {r.report}, or `ctxprobe report {r.run_name} --db {r.db}`")
