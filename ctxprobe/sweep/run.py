"""Run a sweep: plan the cells, skip those stored, hand probe groups to the backend (at most
`backend.concurrency` at once), score each answer and commit it as soon as it finishes."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from ctxprobe import __version__
from ctxprobe.backends.base import CellResult
from ctxprobe.errors import UserError
from ctxprobe.grid import check_grid, check_seed
from ctxprobe.planner import Cell, pending, plan_cells, shard
from ctxprobe.scoring import lenient_score, strict_score
from ctxprobe.store import Run, Store
from ctxprobe.sweep.building import built_ahead, probe_groups


@dataclass
class SweepSpec:
    families: list[str]
    lengths: list[int]
    depths: list[float]
    samples: int = 1
    seed: int = 0
    haystack: str | None = None
    family_params: dict = field(default_factory=dict)  # {family: {param: value}}
    shard: tuple[int, int] = (0, 1)                    # (index, count)
    verify: str | None = None   # how probes prove exactness (probes/exactness.py); not identity

    def __post_init__(self):
        # Refused here, before a store or a backend is opened: a grid too large to plan, and a
        # seed the store cannot hold (counted, never built).
        check_grid(self.families, self.lengths, self.depths, self.samples)
        self.seed = check_seed(self.seed)

    def cells(self) -> list[Cell]:
        return shard(plan_cells(self.families, self.lengths, self.depths, self.samples), *self.shard)


@dataclass
class SweepStats:
    planned: int = 0      # cells in this shard of the grid
    skipped: int = 0      # already stored without error
    finished: int = 0     # stored by this call
    errored: int = 0      # of those, with an error
    prompt_tokens: int = 0
    seconds: float = 0.0


def run_settings(spec: SweepSpec, backend) -> dict:
    """What two invocations must share for one to resume the other's run (the grid may grow)."""
    return {"seed": spec.seed, "haystack": spec.haystack, "family_params": spec.family_params,
            "backend": backend.identity, "tokenizer": backend.tokenizer.fingerprint}


def default_run_name(model_spec: str, backend, settings: dict) -> str:
    """Same model and settings -> same name, so rerunning a command finds its run."""
    label = backend.settings.get("served_model") or model_spec.rstrip("/").split("/")[-1]
    label = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in label).strip("-") or "run"
    digest = hashlib.sha256(json.dumps([model_spec, settings], sort_keys=True).encode())
    return f"{label[-40:]}-{digest.hexdigest()[:8]}"


def open_run(store: Store, backend, spec: SweepSpec, *, model_spec: str, name: str | None = None,
             command: str = "") -> Run:
    """The run to fill: an existing one with the same model and settings (resume), or a new one.

    The server URL is not part of a run's identity, so a sweep survives a server restarted on
    another port (pass the same --name); the served model's identity is.
    """
    run = find_run(store, backend, spec, model_spec=model_spec, name=name)
    if run is not None:
        return run
    settings = run_settings(spec, backend)
    name = name or default_run_name(model_spec, backend, settings)
    try:
        return store.create_run(name=name, model_spec=model_spec,
                                model_fingerprint=backend.model_fingerprint,
                                backend=backend.settings,
                                tokenizer_fingerprint=backend.tokenizer.fingerprint,
                                version=__version__, command=command, settings=settings)
    except sqlite3.IntegrityError:  # another process (a parallel --shard) created it just now
        run = find_run(store, backend, spec, model_spec=model_spec, name=name)
        assert run is not None
        return run


def find_run(store: Store, backend, spec: SweepSpec, *, model_spec: str,
             name: str | None = None) -> Run | None:
    """The stored run that this invocation resumes, or None when there is none yet; writes nothing.
    UserError when a run of that name was made with another model or other settings."""
    settings = run_settings(spec, backend)
    name = name or default_run_name(model_spec, backend, settings)
    run = store.find_run(name)
    if run is None:
        return None
    if run.model_fingerprint != backend.model_fingerprint or run.settings != settings:
        differ = sorted(k for k in set(settings) | set(run.settings)
                        if settings.get(k) != run.settings.get(k))
        if run.model_fingerprint != backend.model_fingerprint:
            differ.insert(0, "model")
        raise UserError(f"run {name!r} in {store.path} was made with other settings "
                        f"({', '.join(differ)} differ); pass another --name to start a new run")
    return run


def pending_cells(store: Store, run: Run | None, spec: SweepSpec) -> list[Cell]:
    """The cells of `spec` that `run` has not stored without error (all of them without a run):
    what a sweep will answer, known before a backend loads anything."""
    cells = spec.cells()
    return cells if run is None else pending(cells, store.done_keys(run.id))


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


def check_families(families: list[str]) -> None:
    from ctxprobe.probes import FAMILIES

    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise UserError(f"unknown probe family {unknown[0]!r}: choose from "
                        f"{', '.join(sorted(FAMILIES))}")


def run_sweep(store: Store | None, run: Run | None, backend, spec: SweepSpec, *, progress: bool = True,
              world=None) -> SweepStats:
    """Answer every cell of `spec` not yet stored for `run`; each cell commits as it finishes.

    Under torchrun (`world`, a ctxprobe.runner.distributed.World): rank 0 reads the store and
    sends every rank the pending cells; all ranks then build the same probes and run the same
    passes in the same order (each pass is sharded across them); only rank 0 writes the store
    and shows progress. Other ranks pass store=None and run=None.
    """
    check_families(spec.families)
    main_rank = world is None or world.is_main
    cells = spec.cells()
    stats = SweepStats(planned=len(cells))
    todo = pending_cells(store, run, spec) if main_rank else None
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
            row = score_cell(cell, probe, result, spec.seed)
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
    groups = probe_groups(todo, spec, backend.tokenizer)
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
