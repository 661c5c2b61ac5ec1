"""Sweeps: run a grid of probes against a backend into the store, and summarize the result."""

from ctxprobe.sweep.run import (SweepSpec, SweepStats, check_families, find_run, open_run, pending_cells,
                                run_settings, run_sweep, score_cell)
from ctxprobe.sweep.summary import effective_length, score_table, summarize

__all__ = ["SweepSpec", "SweepStats", "check_families", "effective_length", "find_run", "open_run",
           "pending_cells", "run_settings", "run_sweep", "score_cell", "score_table", "summarize"]
