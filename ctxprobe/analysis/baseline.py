"""Baseline files: one run's provenance and cells as JSON, for a CI job to commit and compare.

`ctxprobe baseline RUN -o base.json` writes one; `ctxprobe compare base.json RUN_B` reads it
in place of a run in the database. The format is versioned so a newer ctxprobe can refuse
(or upgrade) an old file instead of misreading it. Optional cell keys added since version 1
(`answers`, the gold answers) read as None from files written before them.
"""

from __future__ import annotations

import dataclasses
import json
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
    cells = [{k: None for k in OPTIONAL_CELL_KEYS} | c for c in cells]
    return dict(record.get("run") or {}), cells
