"""`ctxprobe run`, `runs`, `export` and `merge`: sweeps into the results store and back out."""

from __future__ import annotations

import csv
import json
import os
import shlex
import sys

import click

from ctxprobe.commands.options import (SECONDS, builtin_tokenizer, memory_options, threads_option,
                                       verify_option, warn_about_budgets)
from ctxprobe.errors import UserError
from ctxprobe.store import CELL_KEYS, DEFAULT_PATH

db_option = click.option("--db", "db", default=DEFAULT_PATH, show_default=True,
                         type=click.Path(dir_okay=False), help="The SQLite results database.")


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
@click.option("--probe", "probes", required=True, help="Probe families, comma-separated.")
@click.option("--lengths", required=True,
              help="Context lengths in tokens: a list 1k,4k,16k (k = 1024, M = 1048576; exact "
                   "integers too) or a geometric range 1k..128k:x2.")
@click.option("--depths", default="50", show_default=True,
              help="Needle depths in %: a list 0,50,100 or a linear range 0..100:11.")
@click.option("--param", "params", multiple=True, metavar="FAMILY.NAME=VALUE",
              help="A probe family's parameter (see `ctxprobe probes list`), e.g. "
                   "multikey.value_kind=uuid; NAME=VALUE sets it for every --probe family that has "
                   "it. Repeatable. Part of the run's settings: other values make another run.")
@click.option("--samples", default=1, show_default=True, type=int, help="Samples per cell.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the haystacks and needles.")
@db_option
@click.option("--name", default=None, help="Run name [default: model and a hash of the settings].")
@click.option("--max-new-tokens", default=32, show_default=True, type=int,
              help="Most tokens generated per answer.")
@click.option("--generate-failing", default=32, show_default=True, type=click.IntRange(min=0),
              help="Native: for a teacher-forced cell that fails, also generate greedily up to this "
                   "many tokens and store it as the cell's `generation` (what the model really "
                   "writes; costs one more prefill per failing cell); 0: off.")
@click.option("--concurrency", default=4, show_default=True, type=int,
              help="HTTP requests in flight at once.")
@click.option("--haystack", default=None,
              help="'noise', or a .txt file or a directory of them [default: seeded prose].")
@click.option("--served-model", default=None, help="openai: the model name the server knows.")
@click.option("--api", type=click.Choice(["chat", "completions"]), default="chat", show_default=True,
              help="openai: which endpoint to call.")
@click.option("--api-key-env", default=None,
              help="openai: environment variable holding the API key [default: OPENAI_API_KEY if set].")
@click.option("--tokenizer", default=None, callback=builtin_tokenizer,
              help="openai: tokenizer.json (or its directory, or builtin: the built-in model's) to "
                   "count lengths when the server has no /tokenize.")
@click.option("--timeout", default=120.0, show_default=True, type=SECONDS,
              help="openai: seconds a whole request may take (connect, send, wait, read) before "
                   "it is retried.")
@click.option("--max-response-bytes", default=1 << 20, show_default=True, type=int,
              help="openai: a reply body larger than this is not read; its cell is stored as errored.")
@click.option("--retries", default=5, show_default=True, type=int,
              help="openai: retries on 429, 5xx and timeouts.")
@click.option("--shard", default=None, help="Run only the i-th of n shares of the cells, e.g. 0/4.")
@click.option("--chat-template/--no-chat-template", default=True, show_default=True,
              help="Native: wrap probes in the checkpoint's chat template when it has one.")
@click.option("--device", default=None, help="Native: torch device [default: cuda if available].")
@click.option("--dtype", default=None, help="Native: weight dtype [default: the checkpoint's].")
@memory_options
@verify_option
@threads_option
@click.option("--stream", is_flag=True,
              help="openai: stream each answer (server-sent events) and store its time to first "
                   "token, output tokens and decode rate beside the total time.")
@click.option("--reasoning-budget", default=0, show_default=True, type=click.IntRange(min=0),
              help="openai: tokens a thinking model may spend on reasoning before its answer, added "
                   "to --max-new-tokens in each request (see docs/serving.md for sizes).")
@click.option("--dry-run", is_flag=True,
              help="Count the cells, prompt and output tokens (and the cost, with --price-in/--price-out) "
                   "without sending any request but tokenizer calls; stores nothing.")
@click.option("--price-in", default=None, type=float, help="--dry-run: price per million prompt tokens.")
@click.option("--price-out", default=None, type=float, help="--dry-run: price per million output tokens.")
@click.option("--quiet", is_flag=True,
              help="No progress bar, and no line saying that cells are added to an existing run "
                   "(warnings and errors still print).")
@click.option("--router-trace", is_flag=True,
              help="Native MoE models: record, per MoE layer and log-spaced prompt position, the experts "
                   "each cell's prompt chose and the router's top-1 margin; `ctxprobe report` plots them.")
@click.pass_context
def run_command(ctx, model_spec, probes, lengths, depths, samples, seed, db, name, max_new_tokens,
                concurrency, haystack, served_model, api, api_key_env, tokenizer, timeout,
                max_response_bytes, retries, shard, chat_template, device, dtype, gpu_memory,
                host_memory, offload_dir, quiet, verify, threads, params, generate_failing,
                stream=False, reasoning_budget=0, dry_run=False, price_in=None, price_out=None,
                router_trace=False):
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
    from ctxprobe.backends import open_backend
    from ctxprobe.backends.memory import MemoryBudgets
    from ctxprobe.backends.spec import check_router_trace, check_spec
    from ctxprobe.store import Store
    from ctxprobe.sweep import Grid, open_run, run_sweep, summarize
    from ctxprobe.sweep.invocations import Recording

    memory = MemoryBudgets(gpu_memory, host_memory, offload_dir)
    world = _torchrun_world(device)  # None unless torchrun started several processes
    if world is not None:
        return _run_sharded(ctx, world, model_spec, probes, lengths, depths, samples, seed, db, name,
                            max_new_tokens, haystack, shard, chat_template, device, dtype, memory, quiet)
    if router_trace:   # a server is refused before a store is opened or the server called
        check_router_trace(model_spec)
    spec = Grid.parse(probes, lengths, depths, samples=samples, seed=seed, haystack=haystack,
                      params=params, shard=shard, verify=verify)
    check_spec(model_spec, api_key_env=api_key_env)  # a secret in a flag: refused before any store
    if dry_run or price_in is not None or price_out is not None:
        return _dry_run(ctx, spec, model_spec=model_spec, db=db, name=name, memory=memory,
                        price_in=price_in, price_out=price_out,
                        open_options=dict(max_new_tokens=max_new_tokens, concurrency=concurrency,
                                          served_model=served_model, api=api, api_key_env=api_key_env,
                                          tokenizer=tokenizer, timeout=timeout, retries=retries,
                                          max_response_bytes=max_response_bytes,
                                          chat_template=chat_template, device=device, dtype=dtype,
                                          reasoning_budget=reasoning_budget))
    if not model_spec.startswith("openai:"):   # (a server's budgets are refused by open_backend)
        warn_about_budgets(gpu_memory=gpu_memory, host_memory=host_memory, device=device or "auto")
    with Store(db) as store:  # refuse a bad --db before loading a model or calling a server
        backend = open_backend(model_spec, max_new_tokens=max_new_tokens, concurrency=concurrency,
                               served_model=served_model, api=api, api_key_env=api_key_env,
                               tokenizer=tokenizer, timeout=timeout, retries=retries,
                               max_response_bytes=max_response_bytes,
                               chat_template=chat_template, device=device, dtype=dtype, threads=threads,
                               memory=memory, generate_failing=generate_failing,
                               stream=stream, reasoning_budget=reasoning_budget, router_trace=router_trace)
        try:  # native: plan the longest pending cell and load the weights; one that cannot fit stops here
            todo = _pending(store, backend, spec, model_spec, name)
            _prepare(backend, spec, todo)
        except BaseException:
            backend.close()
            raise
        run = open_run(store, backend, spec, model_spec=model_spec, name=name,
                       command=_command_line(ctx))
        recording = Recording(store, run, command=_command_line(ctx), pending=len(todo))
        if recording.message and not quiet:
            click.echo(recording.message, err=True)   # stdout keeps the results
        try:
            stats = run_sweep(store, run, backend, spec, progress=not quiet)
            recording.end(stats)
        except KeyboardInterrupt:
            recording.interrupted()
            _stop_now(store, run, backend)
        finally:
            backend.close()
        cells = store.cells(run.id)
        click.echo(summarize(cells))
        from ctxprobe.analysis.prompt_tokens import warnings as prompt_token_warnings

        for line in prompt_token_warnings(cells):   # a server that cut or re-tokenized prompts
            click.echo(line, err=True)
    click.echo(f"run {run.name}: {stats.finished} cell(s) done now ({stats.errored} errored), "
               f"{stats.skipped} already stored, in {stats.seconds:.1f} s; db {db}")
    _fail_if_mostly_errored(ctx, stats)


def _dry_run(ctx, spec, *, model_spec, db, name, memory, price_in, price_out, open_options) -> None:
    """--dry-run: count what the sweep would send (ctxprobe/sweep/preflight.py); store nothing."""
    from ctxprobe.backends import open_backend
    from ctxprobe.sweep.preflight import check_price, dry_run_todo, preflight

    if not ctx.params.get("dry_run"):
        raise UserError("--price-in and --price-out price a --dry-run: add --dry-run")
    check_price(price_in, "--price-in")
    check_price(price_out, "--price-out")
    # No weights are read (the budgets defer loading), and a server is asked only to tokenize.
    backend = open_backend(model_spec, memory=memory, list_models=False, **open_options)
    try:
        todo, stored = dry_run_todo(db, backend, spec, model_spec=model_spec, name=name)
        report = preflight(backend, spec, todo, already_stored=stored, price_in=price_in,
                           price_out=price_out)
    finally:
        backend.close()
    for line in report.lines():
        click.echo(line)


EXIT_MOSTLY_ERRORED = 3


def _fail_if_mostly_errored(ctx, stats) -> None:
    """A CI job must never read "every cell errored" as success: more than half of this
    invocation's cells errored -> one line on stderr and exit 3."""
    if stats.finished and 2 * stats.errored > stats.finished:
        click.echo(f"error: {stats.errored} of the {stats.finished} cell(s) run now errored (more than "
                   "half; see the error column of `ctxprobe export`): rerun the same command to "
                   "retry them", err=True)
        ctx.exit(EXIT_MOSTLY_ERRORED)


def _torchrun_world(device):
    """torchrun's World, or None. The runner (and torch) is imported only under torchrun, so
    an HTTP run never loads torch."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    from ctxprobe.runner import distributed

    return distributed.init_from_env(device)


def _pending(store, backend, spec, model_spec, name) -> list:
    """The cells the sweep will run, read from the store before any weight is (nothing written)."""
    from ctxprobe.sweep import find_run, pending_cells

    return pending_cells(store, find_run(store, backend, spec, model_spec=model_spec, name=name), spec)


def _prepare(backend, spec, pending: list) -> None:
    """Native: plan for the longest pending cell and load the weights; a finished run loads nothing."""
    from ctxprobe.sweep import longest_pending

    if pending:
        backend.prepare(*longest_pending(spec, pending, backend.tokenizer))


def _run_sharded(ctx, world, model_spec, probes, lengths, depths, samples, seed, db, name, max_new_tokens,
                 haystack, shard, chat_template, device, dtype, memory, quiet) -> None:
    """`ctxprobe run` under torchrun: every rank loads the model and runs every pass on its shard
    of the prompt; rank 0 alone opens the store, picks the pending cells, writes and prints."""
    from contextlib import ExitStack

    from ctxprobe.backends import open_backend
    from ctxprobe.runner import distributed
    from ctxprobe.store import Store
    from ctxprobe.sweep import Grid, open_run, run_sweep, summarize
    from ctxprobe.sweep.invocations import Recording

    store = run = backend = spec = todo = recording = None
    with ExitStack() as stack:
        def open_all():
            nonlocal store, backend, spec, todo
            spec = Grid.parse(probes, lengths, depths, samples=samples, seed=seed, haystack=haystack,
                              params=ctx.params.get("params") or (), shard=shard,
                              verify=ctx.params.get("verify"))
            if model_spec.startswith("openai:"):
                raise UserError("torchrun shards the native runner's prefill; an openai: server needs "
                                "no torchrun: run `ctxprobe run` as one process")
            if world.is_main:
                store = stack.enter_context(Store(db))
            backend = open_backend(model_spec, max_new_tokens=max_new_tokens, chat_template=chat_template,
                                   device=distributed.rank_device(world, device), dtype=dtype,
                                   memory=memory, threads=ctx.params.get("threads"),
                                   generate_failing=ctx.params.get("generate_failing") or 0,
                                   router_trace=bool(ctx.params.get("router_trace")))
            stack.callback(backend.close)
            if world.is_main:
                todo = _pending(store, backend, spec, model_spec, name)

        def prepare_all():
            nonlocal run, recording
            # Every rank plans its share of the longest cell under the smallest free memory of any
            # rank, so all choose the same plan (the ring runs the same tiers and chunks everywhere).
            backend.planner.agree(world)
            _prepare(backend, spec, todo)
            if world.is_main:
                run = open_run(store, backend, spec, model_spec=model_spec, name=name,
                               command=_command_line(ctx))
                recording = Recording(store, run, command=_command_line(ctx), pending=len(todo))
                if recording.message and not quiet:
                    click.echo(recording.message, err=True)   # stdout keeps the results

        _on_every_rank(world, open_all)
        todo = world.broadcast(todo)    # rank 0 read the pending cells: every rank loads, or none does
        _on_every_rank(world, prepare_all)
        # A pass that fails here ends this rank at once (no close: the others may be inside a
        # collective); torchrun then stops them, and a rerun resumes from the stored cells.
        stats = run_sweep(store, run, backend, spec, progress=not quiet, world=world)
        world.close()
        if world.is_main:
            recording.end(stats)
            click.echo(summarize(store.cells(run.id)))
            click.echo(f"run {run.name}: {stats.finished} cell(s) done now ({stats.errored} errored), "
                       f"{stats.skipped} already stored, in {stats.seconds:.1f} s on {world.size} ranks; "
                       f"db {db}")


def _on_every_rank(world, step) -> None:
    """Run step() on every rank; if it failed on any, every rank raises (none waits in a collective)."""
    error = None
    try:
        step()
    except Exception as e:
        error = e
    try:
        world.agree(error)
    except Exception:
        world.close()
        raise


def _stop_now(store, run, backend) -> None:
    """Ctrl-C: every finished cell is already committed, so say how to resume and exit at
    once rather than wait for requests in flight (up to --timeout each) to come back."""
    backend.close()
    stored, _ = store.cell_counts(run.id)
    click.echo(f"\ninterrupted: {stored} cell(s) of run {run.name} are stored; rerun the same "
               "command to resume", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


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
