"""Compare two runs cell by cell: align on the probe, test each (family, length), decide.

Cells align on (family, length, depth, sample, seed, probe_hash): the same probe text asked
of both models, so each pair differs only in the model. A (family, length) cell regressed when
its paired test is significant after Holm's correction AND its mean dropped by more than
min_drop (in score units, or nats for log-probabilities).

As a gate, a (family, length) that A has results for and B has none for (no cell at all, every
cell errored, or none pairing with A's) fails too: it is listed in `missing`, never dropped
into a footnote, since "B could not be measured there" must not read as "B is no worse".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ctxprobe.analysis.intervals import is_binary
from ctxprobe.analysis.paired import bootstrap_worse, holm, mcnemar_worse
from ctxprobe.analysis.summary import usable
from ctxprobe.errors import UserError

PAIR_KEY = ("family", "length", "depth", "sample", "seed", "probe_hash")
METRICS = ("score", "logprob")


@dataclass
class CellComparison:
    family: str
    length: int
    pairs: int
    mean_a: float
    mean_b: float
    test: str          # "mcnemar" or "bootstrap"
    p: float           # one-sided: B worse than A
    p_adjusted: float  # Holm, across all cells of the comparison
    significant: bool  # B significantly worse than A after correction
    regressed: bool    # significant and the mean dropped by more than min_drop

    @property
    def delta(self) -> float:
        return self.mean_b - self.mean_a


@dataclass
class MissingCell:
    """A (family, length) with usable cells in A and no pair in B: a failure of the gate."""
    family: str
    length: int
    cells_a: int      # usable cells of A here
    mean_a: float
    kind: str         # "absent", "errored", "no metric" or "unpaired" (the last two: a setup mismatch)
    reason: str       # for people: "no cell in B", "all 12 errored in B", ...


@dataclass
class Comparison:
    metric: str
    alpha: float
    min_drop: float
    cells: list[CellComparison]
    unpaired_a: int   # usable cells of A with no partner in B
    unpaired_b: int
    missing: list[MissingCell] = field(default_factory=list)

    @property
    def regressions(self) -> list[CellComparison]:
        return [c for c in self.cells if c.regressed]

    @property
    def failed(self) -> bool:
        """The gate's verdict: some cell regressed, or B has no result where A has one."""
        return bool(self.regressions or self.missing)


def pair_cells(cells_a, cells_b, metric: str = "score") -> tuple[dict, int, int]:
    """{(family, length): (values_a, values_b)} over aligned pairs, plus unpaired counts."""
    a = {tuple(c[k] for k in PAIR_KEY): float(c[metric]) for c in usable(cells_a, metric)}
    b = {tuple(c[k] for k in PAIR_KEY): float(c[metric]) for c in usable(cells_b, metric)}
    shared = sorted(a.keys() & b.keys(), key=lambda k: tuple(str(v) for v in k))
    groups: dict[tuple[str, int], tuple[list, list]] = {}
    for key in shared:
        values_a, values_b = groups.setdefault((key[0], int(key[1])), ([], []))
        values_a.append(a[key])
        values_b.append(b[key])
    pairs = {k: (np.array(v[0]), np.array(v[1])) for k, v in sorted(groups.items())}
    return pairs, len(a.keys() - b.keys()), len(b.keys() - a.keys())


def compare(cells_a, cells_b, *, metric: str = "score", alpha: float = 0.05,
            min_drop: float = 0.05, n_boot: int = 2000, seed: int = 0) -> Comparison:
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    if not 0 < alpha < 1:
        raise UserError(f"--alpha {alpha} is not in (0, 1): use e.g. 0.05")
    if min_drop < 0:
        raise UserError(f"--min-drop {min_drop} is negative: use e.g. 0.05")
    pairs, unpaired_a, unpaired_b = pair_cells(cells_a, cells_b, metric)
    missing = missing_in_b(cells_a, cells_b, set(pairs), metric)
    if not pairs and all(m.kind in SETUP_MISMATCH for m in missing):
        raise UserError(
            f"the two runs share no cells with a {metric}: compare runs made with the same "
            "probes, lengths, depths, samples and --seed (log-probabilities need native runs)")
    rows = []
    for (family, length), (a, b) in pairs.items():
        binary = metric == "score" and is_binary(a) and is_binary(b)
        p = mcnemar_worse(a, b) if binary else bootstrap_worse(a, b, n_boot, seed)
        rows.append(CellComparison(family, length, a.size, float(a.mean()), float(b.mean()),
                                   "mcnemar" if binary else "bootstrap", p, p, False, False))
    for row, adjusted in zip(rows, holm([r.p for r in rows])):
        row.p_adjusted = float(adjusted)
        row.significant = bool(adjusted < alpha)
        row.regressed = row.significant and (row.mean_a - row.mean_b) > min_drop
    return Comparison(metric, alpha, min_drop, rows, unpaired_a, unpaired_b, missing)


SETUP_MISMATCH = ("no metric", "unpaired")   # alone, the runs were not made to be compared: exit 2


def missing_in_b(cells_a, cells_b, paired: set, metric: str = "score") -> list[MissingCell]:
    """Each (family, length) with usable cells in A but outside `paired`, and why B has none."""
    values_a: dict[tuple[str, int], list[float]] = {}
    for c in usable(cells_a, metric):
        values_a.setdefault((c["family"], int(c["length"])), []).append(float(c[metric]))
    in_b: dict[tuple[str, int], list[dict]] = {}
    for c in cells_b:
        in_b.setdefault((c["family"], int(c["length"])), []).append(c)
    out = []
    for (family, length), values in sorted(values_a.items()):
        if (family, length) in paired:
            continue
        here = in_b.get((family, length), [])
        if not here:
            kind, reason = "absent", "no cell in B"
        elif all(c.get("error") for c in here):
            kind, reason = "errored", f"all {len(here)} errored in B"
        elif not usable(here, metric):
            kind, reason = "no metric", f"no {metric} in B"
        else:
            kind, reason = "unpaired", "no cell of B pairs with A's (other seed or probe)"
        out.append(MissingCell(family, length, len(values), float(np.mean(values)), kind, reason))
    return out
