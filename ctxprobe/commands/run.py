"""`ctxprobe run`, `runs`, `export` and `merge`: sweeps into the results store and back out."""

from __future__ import annotations

import csv
import json
import os
import shlex
import sys

import click

from ctxprobe.commands.options import (db_option, grid_from, grid_options, native_from, native_options,
                                       server_from, server_options, warn_about_budgets)
from ctxprobe.errors import UserError
from ctxprobe.store import CELL_KEYS


def _command_line(ctx: click.Context) -> str:
    """The command as the user could retype it (from parsed options, so never from argv)."""
    words = ["ctxprobe", ctx.info_name or "run"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == param.default or not param.opts:
            continue
        flag = max(param.opts, key=len)
        if isinstance(param, click.Option) and param.is_flag:
            if value or param.secondary_opts:   # an unset flag with no --no- form is left out
                words.append(flag if value else param.secondary_opts[0])
        elif isinstance(value, (tuple, list)):   # a repeatable option: the flag once per value
            for item in value:
                words += [flag, str(item)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


@click.command("run")
@click.option("--model", "model_spec", required=True,
              help="A checkpoint directory, builtin (the built-in model: runs anywhere, its context "
                   "limit known), or openai:BASE_URL for an OpenAI-compatible server.")
@grid_options
@db_option
@click.option("--name", default=None, help="Run name [default: model and a hash of the settings].")
@click.option("--max-new-tokens", default=32, show_default=True, type=int,
              help="Most tokens generated per answer.")
@native_options
@server_options
@click.option("--dry-run", is_flag=True,
              help="Count the cells, prompt and output tokens (and the cost, with --price-in/--price-out) "
                   "without sending any request but tokenizer calls; stores nothing.")
@click.option("--price-in", default=None, type=float, help="--dry-run: price per million prompt tokens.")
@click.option("--price-out", default=None, type=float, help="--dry-run: price per million output tokens.")
@click.option("--quiet", is_flag=True,
              help="No progress bar, and no line saying that cells are added to an existing run "
                   "(warnings and errors still print).")
@click.pass_context
def run_command(ctx, model_spec, db, name, max_new_tokens, dry_run, price_in, price_out, quiet, **options):
    """Run probes against a model and store one row per cell; rerunning resumes.

    Native runs plan their memory for the longest cell not yet stored before loading any weight
    (--gpu-memory, --host-memory, --offload-dir; default: what is free here) and stop at once,
    storing nothing, when it cannot fit; a finished run reruns without loading the model. Budgets
    are not part of a run's identity: rerun with others to resume.

    Exit status: 0 when the sweep ran; 2 on bad input (nothing stored); 3 when more than half of
    the cells attempted by this invocation errored (e.g. the server failed them all): they are
    stored as errored and a rerun retries them, but the results are not a measurement.

    Example: ctxprobe run --model openai:http://127.0.0.1:8000/v1 --served-model m --probe niah --lengths 1k,4k --depths 0,50,100 --samples 3

    \b
    Example: ctxprobe run --model ./Scout --probe niah --lengths 128k,1M --gpu-memory 78GiB --host-memory 200GiB --offload-dir /scratch
    """
    from ctxprobe import api

    config = api.RunConfig(model_spec, grid_from(options), db=db, name=name, max_new_tokens=max_new_tokens,
                           native=native_from(options), server=server_from(options))
    if dry_run or price_in is not None or price_out is not None:
        if not dry_run:
            raise UserError("--price-in and --price-out price a --dry-run: add --dry-run")
        for line in api.dry_run(config, price_in=price_in, price_out=price_out).lines():
            click.echo(line)
        return
    if not model_spec.startswith("openai:") and not api.torchrun_env():
        # (a server's budgets are refused by open_backend; under torchrun each rank plans its share)
        warn_about_budgets(gpu_memory=config.native.gpu_memory, host_memory=config.native.host_memory,
                           device=config.native.device or "auto")
    try:
        result = api.run(config, progress=not quiet, command=_command_line(ctx),
                         notify=None if quiet else lambda line: click.echo(line, err=True))  # stdout: results
    except api.Interrupted as stop:
        # Every finished cell is committed: say how to resume and exit at once rather than wait
        # for requests in flight (up to --timeout each) to come back.
        click.echo(f"\n{stop}", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    if result is None:   # a torchrun rank other than 0: rank 0 prints
        return
    click.echo(result.summary)
    from ctxprobe.analysis.prompt_tokens import warnings as prompt_token_warnings

    for line in prompt_token_warnings(result.cells):   # a server that cut or re-tokenized prompts
        click.echo(line, err=True)
    stats, on_ranks = result.stats, f" on {result.ranks} ranks" if result.ranks > 1 else ""
    click.echo(f"run {result.name}: {stats.finished} cell(s) done now ({stats.errored} errored), "
               f"{stats.skipped} already stored, in {stats.seconds:.1f} s{on_ranks}; db {db}")
    _fail_if_mostly_errored(ctx, stats)


EXIT_MOSTLY_ERRORED = 3


def _fail_if_mostly_errored(ctx, stats) -> None:
    """A CI job must never read "every cell errored" as success: more than half of this
    invocation's cells errored -> one line on stderr and exit 3."""
    if stats.finished and 2 * stats.errored > stats.finished:
        click.echo(f"error: {stats.errored} of the {stats.finished} cell(s) run now errored (more than "
                   "half; see the error column of `ctxprobe export`): rerun the same command to "
                   "retry them", err=True)
        ctx.exit(EXIT_MOSTLY_ERRORED)


@click.command("runs")
@db_option
def runs_command(db):
    """List the runs in a results database: cells, errors, and the invocations that added to each
    run (how many, and the last one's start; `ctxprobe report` lists them all).

    Example: ctxprobe runs --db ctxprobe.db
    """
    from ctxprobe.store import Store

    with Store(db, readonly=True) as store:  # listing works on a read-only file, mid-sweep too
        rows = [("id", "name", "created", "model", "cells", "errors", "invocations", "last invocation")]
        for run in store.runs():
            n, errors = store.cell_counts(run.id)
            invocations = store.invocations(run.id)
            last = invocations[-1].started if invocations else "-"
            rows.append((str(run.id), run.name, run.created, run.model_spec, str(n), str(errors),
                         str(len(invocations)), last))
    if len(rows) == 1:
        click.echo(f"no runs in {db}")
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


@click.command("export")
@click.argument("run_ref", metavar="RUN")
@db_option
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True)
@click.option("--output", "-o", default="-", type=click.Path(dir_okay=False, allow_dash=True),
              help="File to write [default: stdout].")
def export_command(run_ref, db, fmt, output):
    """Write one row per cell of a run (by name or id) as CSV or JSON lines. Each row holds
    the gold answers (a JSON list, also in CSV; empty for cells stored before ctxprobe kept
    them) beside the response, so another harness can re-score it. In CSV, text that a
    spreadsheet would run as a formula (starting with = + - @) gets a leading ' ; JSON lines
    keep every response exactly.

    Example: ctxprobe export my-run --db ctxprobe.db --format jsonl -o cells.jsonl
    """
    from ctxprobe.store import Store
    from ctxprobe.store.spreadsheet import spreadsheet_safe

    with Store(db, readonly=True) as store:
        run = store.get_run(run_ref)
        cells = store.cells(run.id)
    from ctxprobe.output_file import output_file

    with output_file(output, newline="") as out:  # a file is written whole or not at all
        if fmt == "jsonl":
            for cell in cells:
                out.write(json.dumps({"run": run.name, **cell}, ensure_ascii=False) + "\n")
        else:
            writer = csv.DictWriter(out, fieldnames=("run",) + CELL_KEYS)
            writer.writeheader()
            for cell in cells:
                answers = cell["answers"]  # a CSV field holds one string: a JSON list here
                answers = "" if answers is None else json.dumps(answers, ensure_ascii=False)
                row = {"run": run.name, **cell, "answers": answers}
                writer.writerow({k: spreadsheet_safe(v) for k, v in row.items()})


@click.command("merge")
@click.argument("out_db", type=click.Path(dir_okay=False))
@click.argument("in_dbs", nargs=-1, required=True, type=click.Path(dir_okay=False))
def merge_command(out_db, in_dbs):
    """Merge results databases (e.g. the shards of one sweep) into OUT_DB without duplicates.
    Every input is opened before OUT_DB is; an OUT_DB this command created is removed again if
    the merge fails, so a failure leaves no empty database behind.

    Example: ctxprobe merge all.db shard0.db shard1.db
    """
    from contextlib import ExitStack
    from pathlib import Path

    from ctxprobe.store import Store

    created = not Path(out_db).exists()
    try:
        with ExitStack() as inputs:
            sources = [inputs.enter_context(Store(path, readonly=True)) for path in in_dbs]  # only read
            with Store(out_db) as out:
                for path, source in zip(in_dbs, sources):
                    runs, cells = out.merge_from(source)
                    click.echo(f"{path}: {runs} new run(s), {cells} new cell(s)")
    except BaseException:
        if created:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(out_db + suffix).unlink(missing_ok=True)
        raise


COMMANDS = [run_command, runs_command, export_command, merge_command]
