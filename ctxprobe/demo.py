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
    from ctxprobe import api, plots
    from ctxprobe.analysis.figures import heatmap_figure
    from ctxprobe.analysis.report import build_report
    from ctxprobe.errors import UserError
    from ctxprobe.store import Store
    from ctxprobe.sweep import Grid, OtherSettings, effective_length, summarize

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    db_path = Path(db) if db is not None else out / "ctxprobe.db"
    grid = Grid.parse("niah", lengths, depths, samples=samples, seed=0)
    # Budgets left to what is free: the weights load only for cells still to run, so a finished
    # demo reruns without loading the model, as `ctxprobe run` does.
    config = api.RunConfig("builtin", grid, db=str(db_path), name=RUN_NAME,
                           native=api.NativeOptions(generate_failing=GENERATE_FAILING, threads=threads))
    command = f"ctxprobe demo --lengths {lengths} --depths {depths} --samples {samples}"
    try:
        r = api.run(config, progress=progress, command=command)
    except OtherSettings:  # a demo run of another ctxprobe version; demo has no --name
        raise UserError(f"{db_path} holds a demo run made by another ctxprobe version or "
                        "with other settings; pass another --out or delete that file") from None
    with Store(db_path, readonly=True) as store:
        run = store.get_run(r.name)
        invocations = store.invocations(run.id)
    cells = [c for c in r.cells
             if c["length"] in grid.lengths and c["depth"] in grid.depths and c["sample"] < samples]
    heatmap = plots.save(heatmap_figure(cells, "niah", title="built-in model, niah: greedy-exact by depth and length",
                                        run_name=run.name, effective=effective_length(cells),
                                        designed=DESIGNED_LIMIT),
                         out / "demo-heatmap.png")
    report = out / "demo-report.html"
    report.write_text(build_report(run, cells, invocations=invocations), encoding="utf-8")
    return DemoResult(run_name=run.name, summary=summarize(cells), effective_length=effective_length(cells),
                      expected_length=expected_effective_length(grid.lengths), db=db_path,
                      heatmap=heatmap, report=report, seconds=r.stats.seconds, cells_done=r.stats.finished,
                      message=r.message)
