"""`ctxprobe.run(config)`: one sweep from Python, the same one `ctxprobe run` and `ctxprobe demo`
make from the shell.

    r = ctxprobe.run(ctxprobe.RunConfig("builtin", ctxprobe.Grid.parse("niah", "512,1k")))
    print(r.summary)

The sequence, once for every caller: refuse what can be refused before anything is opened (a
secret in the server URL); open the store, then the backend; read the cells the run has not
stored yet; let the backend prepare for the longest of them (the native runner plans its memory
and loads its weights there: a sweep that cannot fit stops before anything is written); open the
run (or find the one to resume) and record this invocation; sweep, committing each cell as it
finishes. Under torchrun every rank runs the passes on its share of each prompt and rank 0 alone
reads and writes the store.

Nothing here prints: progress goes to a bar on stderr when asked for, and lines meant for the user
(a run resumed) go to `notify`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ctxprobe.backends.options import NativeOptions, ServerOptions
from ctxprobe.store import DEFAULT_PATH
from ctxprobe.sweep.cells import Grid

__all__ = ["Grid", "Interrupted", "NativeOptions", "RunConfig", "RunResult", "ServerOptions", "dry_run",
           "run", "torchrun_env"]


@dataclass(frozen=True)
class RunConfig:
    model: str                # a checkpoint directory, builtin, or openai:BASE_URL
    grid: Grid
    db: str = DEFAULT_PATH    # the SQLite results database
    name: str | None = None   # None: the model and a hash of the settings (a rerun finds its run)
    max_new_tokens: int = 32  # most tokens generated per answer
    native: NativeOptions = field(default_factory=NativeOptions)
    server: ServerOptions = field(default_factory=ServerOptions)


@dataclass
class RunResult:
    name: str
    run_id: int
    db: str
    stats: object             # ctxprobe.sweep.SweepStats of this call: finished, errored, skipped, ...
    cells: list[dict]         # every stored cell of the run, this call's and earlier ones'
    summary: str              # the score tables and effective lengths, as `ctxprobe run` prints them
    ranks: int = 1            # torchrun's processes
    message: str | None = None   # how this call added to a stored run, if it did


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during the sweep: every finished cell is stored; the same call resumes the run."""

    def __init__(self, run_name: str, stored: int):
        super().__init__(run_name, stored)
        self.run_name, self.stored = run_name, stored

    def __str__(self) -> str:
        return (f"interrupted: {self.stored} cell(s) of run {self.run_name} are stored; rerun the same "
                "command to resume")


def torchrun_env() -> bool:
    """Whether torchrun started this process (then the run is sharded over its processes)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def run(config: RunConfig, *, progress: bool = False, command: str = "",
        notify: Callable[[str], None] | None = None) -> RunResult | None:
    """Run `config.grid` against `config.model` into `config.db`; rerunning resumes.

    progress: a bar on stderr. command: how this invocation is recorded (default: a Python call).
    notify: receives lines for the user as the run goes (a run resumed, or already complete).
    Raises UserError on bad input before anything is stored, and Interrupted on Ctrl-C during the
    sweep. Under torchrun, ranks other than 0 return None."""
    command = command or f"ctxprobe.run(model={config.model!r})"
    notify = notify or (lambda line: None)
    if torchrun_env():
        return _run_sharded(config, progress=progress, command=command, notify=notify)
    from ctxprobe.backends import open_backend
    from ctxprobe.backends.spec import check_router_trace, check_spec
    from ctxprobe.store import Store
    from ctxprobe.sweep import open_run, run_sweep, summarize
    from ctxprobe.sweep.invocations import Recording

    if config.native.router_trace:   # a server is refused before a store is opened or the server called
        check_router_trace(config.model)
    check_spec(config.model, api_key_env=config.server.api_key_env)  # a secret: refused before any store
    with Store(config.db) as store:  # a bad db is refused before a model is loaded or a server called
        backend = open_backend(config.model, max_new_tokens=config.max_new_tokens, native=config.native,
                               server=config.server)
        try:  # native: plan the longest pending cell and load the weights; one that cannot fit stops here
            todo = _pending(store, backend, config)
            _prepare(backend, config.grid, todo)
        except BaseException:
            backend.close()
            raise
        run_row = open_run(store, backend, config.grid, model_spec=config.model, name=config.name,
                           command=command)
        recording = Recording(store, run_row, command=command, pending=len(todo))
        if recording.message:
            notify(recording.message)
        try:
            stats = run_sweep(store, run_row, backend, config.grid, progress=progress)
            recording.end(stats)
        except KeyboardInterrupt:
            # Every finished cell is committed already; the requests still in flight are left
            # behind (the CLI exits at once rather than wait up to --timeout for each).
            recording.interrupted()
            raise Interrupted(run_row.name, store.cell_counts(run_row.id)[0]) from None
        finally:
            backend.close()
        cells = store.cells(run_row.id)
    return RunResult(name=run_row.name, run_id=run_row.id, db=str(config.db), stats=stats, cells=cells,
                     summary=summarize(cells), message=recording.message)


def dry_run(config: RunConfig, *, price_in: float | None = None, price_out: float | None = None):
    """What `run(config)` would send, counted without sending anything but tokenizer calls and
    without storing anything: a ctxprobe.sweep.preflight.Preflight (its .lines() as printed)."""
    from ctxprobe.backends import open_backend
    from ctxprobe.backends.spec import check_spec
    from ctxprobe.sweep.preflight import check_price, dry_run_todo, preflight

    check_spec(config.model, api_key_env=config.server.api_key_env)
    check_price(price_in, "--price-in")
    check_price(price_out, "--price-out")
    # No weights are read (the budgets defer loading), and a server is asked only to tokenize.
    backend = open_backend(config.model, max_new_tokens=config.max_new_tokens, native=config.native,
                           server=config.server, list_models=False)
    try:
        todo, stored = dry_run_todo(config.db, backend, config.grid, model_spec=config.model,
                                    name=config.name)
        return preflight(backend, config.grid, todo, already_stored=stored, price_in=price_in,
                         price_out=price_out)
    finally:
        backend.close()


def _pending(store, backend, config: RunConfig) -> list:
    """The cells the sweep will run, read from the store before any weight is (nothing written)."""
    from ctxprobe.sweep import find_run, pending_cells

    stored = find_run(store, backend, config.grid, model_spec=config.model, name=config.name)
    return pending_cells(store, stored, config.grid)


def _prepare(backend, grid: Grid, pending: list) -> None:
    """Let the backend prepare for the longest pending cell; a finished run prepares (loads) nothing."""
    from ctxprobe.sweep import longest_pending

    if pending:
        backend.prepare(*longest_pending(grid, pending, backend.tokenizer))


def _run_sharded(config: RunConfig, *, progress: bool, command: str, notify) -> RunResult | None:
    """Under torchrun: every rank loads the model and runs every pass on its shard of the prompt;
    rank 0 alone opens the store, picks the pending cells and writes. The runner (and torch) is
    imported only here, so an HTTP run never loads torch."""
    from contextlib import ExitStack
    from dataclasses import replace

    from ctxprobe.backends import open_backend
    from ctxprobe.errors import UserError
    from ctxprobe.runner import distributed
    from ctxprobe.store import Store
    from ctxprobe.sweep import open_run, run_sweep, summarize
    from ctxprobe.sweep.invocations import Recording

    world = distributed.init_from_env(config.native.device)
    store = run_row = backend = todo = recording = None
    with ExitStack() as stack:
        def open_all():
            nonlocal store, backend, todo
            if config.model.startswith("openai:"):
                raise UserError("torchrun shards the native runner's prefill; an openai: server needs "
                                "no torchrun: run `ctxprobe run` as one process")
            if world.is_main:
                store = stack.enter_context(Store(config.db))
            native = replace(config.native, device=distributed.rank_device(world, config.native.device))
            backend = open_backend(config.model, max_new_tokens=config.max_new_tokens, native=native, world=world)
            stack.callback(backend.close)
            if world.is_main:
                todo = _pending(store, backend, config)

        def prepare_all():
            nonlocal run_row, recording
            # Every rank plans its share of the longest cell under the smallest free memory of any
            # rank, so all choose the same plan (the ring runs the same tiers and chunks everywhere).
            backend.planner.agree(world)
            _prepare(backend, config.grid, todo)
            if world.is_main:
                run_row = open_run(store, backend, config.grid, model_spec=config.model, name=config.name,
                                   command=command)
                recording = Recording(store, run_row, command=command, pending=len(todo))
                if recording.message:
                    notify(recording.message)

        _on_every_rank(world, open_all)
        todo = world.broadcast(todo)    # rank 0 read the pending cells: every rank loads, or none does
        _on_every_rank(world, prepare_all)
        # A pass that fails here ends this rank at once (no close: the others may be inside a
        # collective); torchrun then stops them, and a rerun resumes from the stored cells.
        stats = run_sweep(store, run_row, backend, config.grid, progress=progress, world=world)
        world.close()
        if not world.is_main:
            return None
        recording.end(stats)
        cells = store.cells(run_row.id)
        return RunResult(name=run_row.name, run_id=run_row.id, db=str(config.db), stats=stats, cells=cells,
                         summary=summarize(cells), ranks=world.size, message=recording.message)


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
