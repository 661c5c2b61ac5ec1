"""`ctxprobe report RUN`: one self-contained HTML file with everything about a run."""

from __future__ import annotations

import click

from ctxprobe.commands.options import db_option
from ctxprobe.output_file import output_file
from ctxprobe.store import Store


@click.command()
@click.argument("run_refs", metavar="RUN [RUN ...]", nargs=-1)
@db_option
@click.option("-o", "--output", default="report.html", show_default=True,
              type=click.Path(dir_okay=False), help="HTML file to write.")
@click.option("--relative", is_flag=True,
              help="Threshold relative to the run's own score at the shortest lengths.")
@click.option("--threshold", default=0.85, show_default=True, type=float,
              help="Score cutoff for the effective length (fraction).")
@click.option("--model", "model_patterns", multiple=True, metavar="PATTERN",
              help="Add the runs whose model matches (shell-style, e.g. 'openai:*'). Repeatable.")
@click.option("--name", "name_patterns", multiple=True, metavar="PATTERN",
              help="Add the runs whose name matches (e.g. 'llama-*'). Repeatable.")
@click.option("--reference", default=None, metavar="RUN",
              help="Several runs: the run the others are tested against [default: the first].")
@click.option("--show-paths", is_flag=True,
              help="Show machine paths (checkpoints, tokenizers) whole, not by their last part.")
def report(run_refs, db, output, relative, threshold, model_patterns, name_patterns, reference,
           show_paths):
    """Write a self-contained HTML report of RUN (name or id): provenance, heatmaps, fall-off
    curves, effective lengths and failing examples (and, for a run with --router-trace, its MoE
    router's expert-load entropy and top-1 margin by prompt position). With several runs (named, or matched by
    --model/--name), one page compares them: a table of runs and of the settings in which they
    differ, heatmaps on one scale and fall-off curves on one axis per family, latency and time to
    first token by length, and paired tests of each run against --reference, regressions marked.

    Example: ctxprobe report llama-8b-niah -o report.html

    \b
    Example: ctxprobe report native-run vllm-run --name 'sglang-*' --reference native-run -o stacks.html
    """
    if len(run_refs) + len(model_patterns) + len(name_patterns) == 0:
        raise click.UsageError("name a RUN, or pass --model/--name patterns")
    if len(run_refs) != 1 or model_patterns or name_patterns or reference:
        return _several(run_refs, db, output, threshold, model_patterns, name_patterns, reference,
                        show_paths)
    from ctxprobe.analysis.report import build_report  # matplotlib loads only when needed

    run_ref = run_refs[0]
    with Store(db, readonly=True) as store:
        run = store.get_run(run_ref)
        cells = store.cells(run.id)
        invocations = store.invocations(run.id)
        router_traces = store.router_traces(run.id)
    html = build_report(run, cells, relative=relative, threshold=threshold, invocations=invocations,
                        show_paths=show_paths, router_traces=router_traces)
    with output_file(output) as f:  # whole or not at all: a failure keeps the earlier report
        f.write(html)
    click.echo(f"wrote {output} ({len(cells)} cells of run {run.name})")


def _several(run_refs, db, output, threshold, model_patterns, name_patterns, reference, show_paths):
    from ctxprobe.analysis.runs_report import build_runs_report, select_runs

    with Store(db, readonly=True) as store:
        runs = select_runs(store, run_refs, model_patterns, name_patterns)
        ref = store.get_run(reference) if reference is not None else runs[0]
        if ref.id not in {r.id for r in runs}:
            runs.insert(0, ref)
        cells_of = {r.id: store.cells(r.id) for r in runs}
        router_traces_of = {r.id: store.router_traces(r.id) for r in runs}
    html = build_runs_report(runs, cells_of, reference=ref, threshold=threshold, show_paths=show_paths,
                             router_traces_of=router_traces_of)
    with output_file(output) as f:
        f.write(html)
    click.echo(f"wrote {output} ({len(runs)} runs, {sum(len(c) for c in cells_of.values())} cells; "
               f"reference {ref.name})")
