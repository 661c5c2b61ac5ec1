"""Sweeps: run a grid of probes against a backend into the store, and summarize the result."""

from ctxprobe.sweep.cells import Grid, check_families
from ctxprobe.sweep.run import (OtherSettings, SweepStats, find_run, longest_pending, open_run, pending_cells,
                                run_settings, run_sweep, score_cell)
from ctxprobe.sweep.summary import effective_length, score_table, summarize

__all__ = ["Grid", "OtherSettings", "SweepStats", "check_families", "effective_length", "find_run", "longest_pending",
           "open_run", "pending_cells", "run_settings", "run_sweep", "score_cell", "score_table", "summarize"]
