"""Cells (the store's row dicts) -> per-family grids and per-length curves.

A cell counts when its metric is present and it has no error: an errored cell (a timeout, a
malformed response) says nothing about the model's context, so it is left out and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctxprobe.analysis.intervals import is_binary, mean_interval


def usable(cells, metric: str = "score") -> list[dict]:
    return [c for c in cells if c.get(metric) is not None and not c.get("error")]


def families(cells) -> list[str]:
    return sorted({c["family"] for c in cells})


def errored(cells) -> int:
    return sum(1 for c in cells if c.get("error"))


@dataclass
class Grid:
    """Mean metric per (depth, length): mean_DL and n_DL have shape [len(depths), len(lengths)]."""
    lengths: list[int]
    depths: list[float]
    mean_DL: np.ndarray
    n_DL: np.ndarray


@dataclass
class Curve:
    """Mean metric per length with its 95% interval (Wilson when every value is 0 or 1)."""
    lengths: list[int]
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n: np.ndarray
    binary: bool


def grid(cells, family: str, metric: str = "score") -> Grid:
    rows = [c for c in usable(cells, metric) if c["family"] == family]
    lengths = sorted({int(c["length"]) for c in rows})
    depths = sorted({float(c["depth"]) for c in rows})
    total = np.zeros((len(depths), len(lengths)))
    n = np.zeros((len(depths), len(lengths)), dtype=int)
    col = {x: i for i, x in enumerate(lengths)}
    row = {d: i for i, d in enumerate(depths)}
    for c in rows:
        r, k = row[float(c["depth"])], col[int(c["length"])]
        total[r, k] += float(c[metric])
        n[r, k] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    return Grid(lengths, depths, mean, n)


def values_by_length(cells, family: str | None = None, metric: str = "score") -> dict[int, np.ndarray]:
    """{length: metric values of every usable cell at that length}; family=None pools all families."""
    out: dict[int, list[float]] = {}
    for c in usable(cells, metric):
        if family is None or c["family"] == family:
            out.setdefault(int(c["length"]), []).append(float(c[metric]))
    return {x: np.asarray(out[x]) for x in sorted(out)}


def curve(cells, family: str | None = None, metric: str = "score") -> Curve:
    by_length = values_by_length(cells, family, metric)
    lengths = list(by_length)
    values = list(by_length.values())
    intervals = [mean_interval(v) for v in values]
    return Curve(lengths,
                 np.array([v.mean() for v in values]),
                 np.array([i[0] for i in intervals]),
                 np.array([i[1] for i in intervals]),
                 np.array([v.size for v in values]),
                 all(is_binary(v) for v in values))
