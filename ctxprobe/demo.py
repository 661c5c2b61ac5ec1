"""`ctxprobe demo`: the whole tool on the built-in model, on a CPU, in about a minute.

A niah sweep on the built-in model (a constructed 2-layer Llama 4 MoE whose context limit is
known: greedy retrieval holds up to ~5.8K tokens of the default haystack, see docs/builtin.md),
stored in SQLite, drawn as a heatmap, written up as an HTML report. The measured effective
length should equal the designed one; the demo says whether it does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEMO_LENGTHS = "512..16k:x2"
DEMO_DEPTHS = "0..100:11"
DEMO_SAMPLES = 2
DESIGNED_LIMIT = 5853  # tokens: where the first digit's attention weight falls to 1/2 (docs/builtin.md)
RUN_NAME = "demo-builtin"
GENERATE_FAILING = 32  # tokens of real greedy output kept for each failing (teacher-forced) cell


@dataclass
class DemoResult:
    run_name: str
    summary: str             # the length x depth table and effective length, as printed
    effective_length: int | None
    expected_length: int      # the largest grid length below the designed limit
    db: Path
    heatmap: Path
    report: Path
    seconds: float
    cells_done: int
    message: str | None = None  # how this invocation added to a stored demo run, if it did


def expected_effective_length(lengths: list[int], limit: int = DESIGNED_LIMIT) -> int | None:
    """On a grid, the designed limit reads as the largest tested length below it."""
    below = [n for n in sorted(lengths) if n < limit]
    return below[-1] if below else None


def run_demo(out_dir: str | Path = ".", *, lengths: str = DEMO_LENGTHS, depths: str = DEMO_DEPTHS,
             samples: int = DEMO_SAMPLES, db: str | Path | None = None,
             progress: bool = True, threads: int | None = None) -> DemoResult:
    """threads: torch's CPU threads per pass (None: chosen from the free cores,
    ctxprobe/backends/threads.py)."""
    from ctxprobe.analysis.figures import heatmap_figure
    from ctxprobe.analysis.report import build_report
    from ctxprobe.backends import open_backend
    from ctxprobe.backends.memory import MemoryBudgets
    from ctxprobe.errors import UserError
    from ctxprobe.store import Store
    from ctxprobe.sweep import (Grid, effective_length, find_run, longest_pending, open_run, pending_cells,
                                run_sweep, summarize)
    from ctxprobe.sweep.invocations import Recording

    from ctxprobe import plots
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    db_path = Path(db) if db is not None else out / "ctxprobe.db"
    spec = Grid.parse("niah", lengths, depths, samples=samples, seed=0)
    with Store(db_path) as store:
        # With budgets (here: what is free) the weights load only for cells still to run, so a
        # finished demo reruns without loading the model, as `ctxprobe run` does.
        backend = open_backend("builtin", generate_failing=GENERATE_FAILING, memory=MemoryBudgets(),
                               threads=threads)
        command = f"ctxprobe demo --lengths {lengths} --depths {depths} --samples {samples}"
        try:
            try:
                stored = find_run(store, backend, spec, model_spec="builtin", name=RUN_NAME)
            except UserError:  # a demo run of another ctxprobe version; demo has no --name
                raise UserError(f"{db_path} holds a demo run made by another ctxprobe version or "
                                "with other settings; pass another --out or delete that file") from None
            pending = pending_cells(store, stored, spec)
            if pending:   # the plan (and where the weights went) is part of the run's provenance
                backend.prepare(*longest_pending(spec, pending, backend.tokenizer))
            run = open_run(store, backend, spec, model_spec="builtin", name=RUN_NAME, command=command)
            recording = Recording(store, run, command=command, pending=len(pending))
            stats = run_sweep(store, run, backend, spec, progress=progress)
            recording.end(stats)
        finally:
            backend.close()
        invocations = store.invocations(run.id)
        cells = [c for c in store.cells(run.id)
                 if c["length"] in spec.lengths and c["depth"] in spec.depths and c["sample"] < samples]
    heatmap = plots.save(heatmap_figure(cells, "niah", title="built-in model, niah: greedy-exact by depth and length",
                                        run_name=run.name, effective=effective_length(cells),
                                        designed=DESIGNED_LIMIT),
                         out / "demo-heatmap.png")
    report = out / "demo-report.html"
    report.write_text(build_report(run, cells, invocations=invocations), encoding="utf-8")
    return DemoResult(run_name=run.name, summary=summarize(cells), effective_length=effective_length(cells),
                      expected_length=expected_effective_length(spec.lengths), db=db_path,
                      heatmap=heatmap, report=report, seconds=stats.seconds, cells_done=stats.finished,
                      message=recording.message)
