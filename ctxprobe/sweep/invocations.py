"""A run is one question, asked by one or more commands: each invocation that adds to a run
(`ctxprobe run`, `ctxprobe demo`) is recorded with its command line, time, ctxprobe version and
the cells it added, so a run grown by two different grids says so in `runs` and the report. An
invocation with nothing left to run writes nothing (a finished run's database stays as it was)."""

from __future__ import annotations

from ctxprobe.version import __version__
from ctxprobe.store import Run, Store


class Recording:
    """One invocation of a run, recorded in the store from before its first cell to its end.

    `message` says what this invocation does to the run: add to an existing one, or nothing."""

    def __init__(self, store: Store, run: Run, *, command: str, pending: int):
        self.store, self.run = store, run
        self.stored_before, self.errored_before = store.cell_counts(run.id)
        earlier = len(store.invocations(run.id))
        self.message = _message(run.name, pending, self.stored_before, self.errored_before, earlier)
        self.id = None if not pending else store.start_invocation(
            run.id, command=command, version=__version__, cells_pending=pending)

    def end(self, stats) -> None:
        """After the sweep: `stats`, a SweepStats of this invocation."""
        if self.id is not None:
            self.store.end_invocation(self.id, cells_done=stats.finished, cells_errored=stats.errored)

    def interrupted(self) -> None:
        """Ctrl-C: the cells that reached the store (a retried errored cell counts only if it is new)."""
        if self.id is None:
            return
        stored, errored = self.store.cell_counts(self.run.id)
        self.store.end_invocation(self.id, cells_done=stored - self.stored_before,
                                  cells_errored=max(0, errored - self.errored_before))


def _message(name: str, pending: int, stored: int, errored: int, earlier: int) -> str | None:
    """None for a new run (nothing to say); else how this invocation adds to the stored one."""
    if not stored and not earlier:
        return None
    held = f"{stored} stored" + (f", {errored} of them errored" if errored else "")
    by = f", by {earlier} earlier invocation{'s' if earlier != 1 else ''}" if earlier else ""
    if not pending:
        return f"run {name} already holds every cell asked for ({held}{by}); nothing to run"
    return f"adding {pending} cell(s) to existing run {name} ({held}{by})"

