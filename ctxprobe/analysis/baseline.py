"""Baseline files: one run's provenance and cells as JSON, for a CI job to commit and compare.

`ctxprobe baseline RUN -o base.json` writes one; `ctxprobe compare base.json RUN_B` reads it
in place of a run in the database. The format is versioned so a newer ctxprobe can refuse
(or upgrade) an old file instead of misreading it. Optional cell keys added since version 1
(`answers`, the gold answers) read as None from files written before them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from ctxprobe.errors import UserError
from ctxprobe.output_file import output_file

FORMAT = "ctxprobe-baseline"
VERSION = 1
REQUIRED_CELL_KEYS = ("family", "length", "depth", "sample", "seed", "probe_hash", "score")
OPTIONAL_CELL_KEYS = ("answers",)


def write_baseline(path, run, cells) -> Path:
    record = {"format": FORMAT, "version": VERSION, "run": dataclasses.asdict(run), "cells": cells}
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    with output_file(path) as f:  # whole or not at all: a CI job never commits half a baseline
        f.write(text)
    return Path(path)


def read_baseline(path) -> tuple[dict, list[dict]]:
    """(run metadata dict, cells) from a baseline file; a UserError naming the file otherwise."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read baseline file {path}: {e}; write one with "
                        "`ctxprobe baseline RUN -o FILE`") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise UserError(f"{path} is not a ctxprobe baseline file; write one with "
                        "`ctxprobe baseline RUN -o FILE`")
    if record.get("version") != VERSION:
        raise UserError(f"baseline file {path} has format version {record.get('version')}, this "
                        f"ctxprobe reads version {VERSION}; rewrite it with `ctxprobe baseline`")
    cells = record.get("cells")
    if not isinstance(cells, list) or any(
            not isinstance(c, dict) or any(k not in c for k in REQUIRED_CELL_KEYS) for c in cells):
        raise UserError(f"baseline file {path} has malformed cells (each needs "
                        f"{', '.join(REQUIRED_CELL_KEYS)}); rewrite it with `ctxprobe baseline`")
    run = record.get("run")
    if run is not None and not isinstance(run, dict):
        raise UserError(f"baseline file {path}: 'run' must be an object of run metadata, found "
                        f"{json.dumps(run)[:60]}; rewrite it with `ctxprobe baseline`")
    seen: dict[tuple, int] = {}
    for i, cell in enumerate(cells):
        problem = cell_problem(cell)
        if problem is None:
            key = tuple(cell[k] for k in PAIR_KEY)
            if key in seen:
                problem = f"repeats cell {seen[key]} (the same family, length, depth, sample, seed and probe)"
            seen.setdefault(key, i)
        if problem is not None:
            raise UserError(f"baseline file {path}: cell {i} {problem}; rewrite it with `ctxprobe baseline`")
    cells = [{k: None for k in OPTIONAL_CELL_KEYS} | c for c in cells]
    return dict(run or {}), cells


PAIR_KEY = ("family", "length", "depth", "sample", "seed", "probe_hash")   # as compare pairs cells


def _whole(v, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# What each key of a baseline cell must hold (None allowed only where the store allows it):
# a wrong one would otherwise fail deep inside compare, or silently pair or score wrongly.
_CELL_RULES = {
    "family": ("a probe family name", lambda v: isinstance(v, str) and v != ""),
    "length": ("a whole number of tokens >= 1", lambda v: _whole(v, 1)),
    "depth": ("a percentage from 0 to 100", lambda v: _number(v) and 0 <= v <= 100),
    "sample": ("a whole number >= 0", lambda v: _whole(v, 0)),
    "seed": ("a whole number >= 0", lambda v: _whole(v, 0)),
    "probe_hash": ("a probe hash (text)", lambda v: isinstance(v, str)),
    "score": ("a number from 0 to 1, or null", lambda v: v is None or (_number(v) and 0 <= v <= 1)),
    "logprob": ("a finite number, or null", lambda v: v is None or _number(v)),
    "error": ("text, or null", lambda v: v is None or isinstance(v, str)),
    "answers": ("a list of texts, or null",
                lambda v: v is None or (isinstance(v, list) and all(isinstance(a, str) for a in v))),
}


def cell_problem(cell: dict) -> str | None:
    """What is wrong with one baseline cell ('has length = "4k", expected ...'), or None."""
    for key, (expected, ok) in _CELL_RULES.items():
        if key in cell and not ok(cell[key]):
            return f"has {key} = {json.dumps(cell[key], default=str)[:60]}, expected {expected}"
    return None
