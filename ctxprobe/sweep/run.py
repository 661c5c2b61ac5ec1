"""Run a sweep: plan the cells, skip those stored, hand probe groups to the backend (at most
`backend.concurrency` at once), score each answer and commit it as soon as it finishes."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from ctxprobe.version import __version__
from ctxprobe.backends.base import CellResult
from ctxprobe.errors import UserError
from ctxprobe.scoring import lenient_score, strict_score
from ctxprobe.store import Run, Store
from ctxprobe.sweep.building import built_ahead, probe_groups
from ctxprobe.sweep.cells import Cell, Grid, build_probes, check_families, pending


class OtherSettings(UserError):
    """A stored run of the asked name was made with another model or other settings."""


@dataclass
class SweepStats:
    planned: int = 0      # cells in this shard of the grid
    skipped: int = 0      # already stored without error
    finished: int = 0     # stored by this call
    errored: int = 0      # of those, with an error
    prompt_tokens: int = 0
    seconds: float = 0.0


def run_settings(grid: Grid, backend) -> dict:
    """What two invocations must share for one to resume the other's run (the grid may grow)."""
    return {"seed": grid.seed, "haystack": grid.haystack, "family_params": grid.params,
            "backend": backend.identity, "tokenizer": backend.tokenizer.fingerprint}


def default_run_name(model_spec: str, backend, settings: dict) -> str:
    """Same model and settings -> same name, so rerunning a command finds its run."""
    label = backend.settings.get("served_model") or model_spec.rstrip("/").split("/")[-1]
    label = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in label).strip("-") or "run"
    digest = hashlib.sha256(json.dumps([model_spec, settings], sort_keys=True).encode())
    return f"{label[-40:]}-{digest.hexdigest()[:8]}"


def open_run(store: Store, backend, grid: Grid, *, model_spec: str, name: str | None = None,
             command: str = "") -> Run:
    """The run to fill: an existing one with the same model and settings (resume), or a new one.

    The server URL is not part of a run's identity, so a sweep survives a server restarted on
    another port (pass the same --name); the served model's identity is.
    """
    run = find_run(store, backend, grid, model_spec=model_spec, name=name)
    if run is not None:
        return run
    settings = run_settings(grid, backend)
    name = name or default_run_name(model_spec, backend, settings)
    try:
        return store.create_run(name=name, model_spec=model_spec,
                                model_fingerprint=backend.model_fingerprint,
                                backend=backend.settings,
                                tokenizer_fingerprint=backend.tokenizer.fingerprint,
                                version=__version__, command=command, settings=settings)
    except sqlite3.IntegrityError:  # another process (a parallel --shard) created it just now
        run = find_run(store, backend, grid, model_spec=model_spec, name=name)
        assert run is not None
        return run


def find_run(store: Store, backend, grid: Grid, *, model_spec: str,
             name: str | None = None) -> Run | None:
    """The stored run that this invocation resumes, or None when there is none yet; writes nothing.
    UserError when a run of that name was made with another model or other settings."""
    settings = run_settings(grid, backend)
    name = name or default_run_name(model_spec, backend, settings)
    run = store.find_run(name)
    if run is None:
        return None
    if run.model_fingerprint != backend.model_fingerprint or run.settings != settings:
        differ = sorted(k for k in set(settings) | set(run.settings)
                        if settings.get(k) != run.settings.get(k))
        if run.model_fingerprint != backend.model_fingerprint:
            differ.insert(0, "model")
        raise OtherSettings(f"run {name!r} in {store.path} was made with other settings "
                        f"({', '.join(differ)} differ); pass another --name to start a new run")
    return run


def pending_cells(store: Store, run: Run | None, grid: Grid) -> list[Cell]:
    """The cells of `grid` that `run` has not stored without error (all of them without a run):
    what a sweep will answer, known before a backend loads anything."""
    cells = grid.cells()
    return cells if run is None else pending(cells, store.done_keys(run.id))


def longest_pending(grid: Grid, cells: list[Cell], tokenizer) -> tuple[int, Iterator] | None:
    """(the longest length among `cells`, sample probes) for a backend to plan its memory by
    (Backend.prepare); None without cells.

    A probe's needles, question and answer are the same at every length (they are seeded by
    family, seed and sample), so one probe per family and sample at the shortest of the lengths,
    where probes are cheap to build, shows the most tokens any cell adds around its length. The
    probes are built as the backend reads them: a backend that plans nothing builds none.
    """
    if not cells:
        return None
    shortest = min(c.length for c in cells)
    samples: dict[tuple, Cell] = {}
    for c in cells:
        if c.length == shortest:
            samples.setdefault((c.family, c.sample), c)
    built = build_probes(list(samples.values()), seed=grid.seed, tokenizer=tokenizer,
                         haystack=grid.haystack, family_params=grid.params)
    return max(c.length for c in cells), (probe for _, probe in built)


def score_cell(cell: Cell, probe, result: CellResult, seed: int) -> dict:
    """A store row for one answered probe."""
    row = {"family": cell.family, "length": cell.length, "depth": cell.depth,
           "sample": cell.sample, "seed": seed, "probe_hash": probe.hash,
           "answers": list(probe.answers),
           "exact": result.exact, "logprob": result.logprob, "first_rank": result.first_rank,
           "response": result.response, "response_kind": result.response_kind,
           "generation": result.generation, "prompt_tokens": result.prompt_tokens,
           "latency": result.latency, "error": result.error,
           "strict": None, "lenient": None, "score": None,
           "informative_rank": result.informative_rank,
           "server_prompt_tokens": result.server_prompt_tokens,
           "finish_reason": result.finish_reason, "truncated": result.truncated,
           "reasoning_tokens": result.reasoning_tokens, "output_tokens": result.output_tokens,
           "ttft": result.ttft, "decode_rate": result.decode_rate}
    # A reply cut off by the token limit before any answer is not a wrong answer: it is stored
    # as truncated and left unscored (every figure leaves it out and counts it).
    if result.error is None and not result.truncated:
        row["strict"] = strict_score(result.response, row["answers"], probe.answer_prefix)
        row["lenient"] = lenient_score(result.response, row["answers"])
        row["score"] = float(result.exact) if result.exact is not None else row["strict"]
        graded = probe.grade(result.response) if hasattr(probe, "grade") else None
        if graded is not None:  # a family with its own grader (mrcr: MRCR's sequence-matcher ratio)
            row["score"] = graded
    return row


def run_sweep(store: Store | None, run: Run | None, backend, grid: Grid, *, progress: bool = True,
              world=None) -> SweepStats:
    """Answer every cell of `grid` not yet stored for `run`; each cell commits as it finishes.

    Under torchrun (`world`, a ctxprobe.runner.distributed.World): rank 0 reads the store and
    sends every rank the pending cells; all ranks then build the same probes and run the same
    passes in the same order (each pass is sharded across them); only rank 0 writes the store
    and shows progress. Other ranks pass store=None and run=None.
    """
    check_families(grid.families)
    main_rank = world is None or world.is_main
    cells = grid.cells()
    stats = SweepStats(planned=len(cells))
    todo = pending_cells(store, run, grid) if main_rank else None
    if world is not None:
        todo = world.broadcast(todo)
    stats.skipped = len(cells) - len(todo)
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="cell", file=sys.stderr, disable=not progress or not todo or not main_rank,
               dynamic_ncols=True, desc=run.name if run is not None else "")
    from contextlib import ExitStack

    from ctxprobe.pass_progress import BarPostfix, listen

    postfix, listening = BarPostfix(bar), ExitStack()
    if not bar.disable:   # the native runner's layers inside a long cell, beside the sweep's figures
        listening.enter_context(listen(postfix))
    start = time.perf_counter()
    redact = getattr(backend, "redact", None)  # the HTTP backend's: what the store may keep

    def finish(future: Future, items: list[tuple[Cell, object]]) -> None:
        try:
            results = future.result()
        except Exception as e:  # a backend bug or a failed pass: record it, keep sweeping
            if world is not None:
                # A pass that failed on one rank leaves the others inside a collective: stop this
                # rank so torchrun stops them all; cells already stored let a rerun resume.
                raise
            results = [CellResult(error=f"{type(e).__name__}: {e}") for _ in items]
        for (cell, probe), result in zip(items, results):
            row = score_cell(cell, probe, result, grid.seed)
            if redact is not None:  # scored on the raw text above; stored without the API key
                row["response"] = redact(row["response"])
                row["error"] = row["error"] and redact(row["error"])
            if main_rank and not store.put_cell(run.id, row, router_trace=result.router_trace):
                stats.skipped += 1  # another process finished this cell meanwhile: its row stands
                continue
            stats.finished += 1
            stats.errored += row["error"] is not None
            stats.prompt_tokens += row["prompt_tokens"] or 0
        elapsed = time.perf_counter() - start
        postfix.sweep(f"{stats.prompt_tokens / max(elapsed, 1e-9):,.0f} tok/s, {stats.errored} errors")
        bar.update(len(items))

    pool = ThreadPoolExecutor(max_workers=max(1, backend.concurrency),
                              initializer=world.bind_thread if world is not None else None)
    in_flight: dict[Future, list] = {}
    # Under torchrun one pass at a time: a failed pass must leave no other pass of this rank
    # waiting in a collective, or the rank could not exit.
    most_in_flight = 2 * backend.concurrency if world is None else 1
    groups = probe_groups(todo, grid, backend.tokenizer)
    if world is None:  # the next probes are built while requests are in flight
        groups = built_ahead(groups, ahead=most_in_flight)
    try:
        for items in groups:
            # Keep the pool fed but bounded: finished cells are stored before more are sent.
            while len(in_flight) >= most_in_flight:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for f in done:
                    finish(f, in_flight.pop(f))
            in_flight[pool.submit(backend.run_group, [p for _, p in items])] = items
        while in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for f in done:
                finish(f, in_flight.pop(f))
    finally:
        listening.close()
        groups.close()   # stops the builder thread
        pool.shutdown(wait=not in_flight, cancel_futures=True)
        bar.close()
    stats.seconds = time.perf_counter() - start
    return stats
