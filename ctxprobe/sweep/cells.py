"""From a grid to work: the grid itself, its cells, the shard this machine runs, the cells still
to do, and groups of probes that share a context so the runner prefills it once.

A cell is (family, length, depth, sample). Cells are listed in one canonical order, so
`--shard i/n` takes the same cells on every machine that runs the same grid.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from ctxprobe.errors import UserError
from ctxprobe.grid import check_grid, check_seed, parse_depths, parse_lengths


@dataclass(frozen=True)
class Grid:
    """What a sweep asks: probe families x lengths x depths x samples, from one seed.

    `Grid.parse` reads the CLI's spellings ("niah,kv", "1k..8k:x2", "0..100:11",
    "multikey.value_kind=uuid"); the constructor takes the parsed values.
    """

    families: tuple[str, ...]
    lengths: tuple[int, ...]
    depths: tuple[float, ...] = (50,)
    samples: int = 1
    seed: int = 0
    haystack: str | None = None    # 'noise', a .txt file or a directory of them; None: seeded prose
    params: Mapping[str, Mapping] = field(default_factory=dict)   # {family: {param: typed value}}
    shard: tuple[int, int] = (0, 1)                                # (index, count)
    verify: str | None = None   # how probes prove exactness (probes/exactness.py); not identity

    def __post_init__(self):
        set_ = object.__setattr__   # frozen: normalise once, here
        set_(self, "families", tuple(self.families))
        set_(self, "lengths", tuple(self.lengths))
        set_(self, "depths", tuple(self.depths))
        set_(self, "params", {family: dict(values) for family, values in self.params.items()})
        set_(self, "shard", tuple(self.shard))
        # Refused here, before a store or a backend is opened: a grid too large to plan, and a
        # seed the store cannot hold (counted, never built).
        check_grid(self.families, self.lengths, self.depths, self.samples)
        set_(self, "seed", check_seed(self.seed))

    @classmethod
    def parse(cls, probes: str | Sequence[str], lengths: str | Sequence[int],
              depths: str | Sequence[float] = "50", *, samples: int = 1, seed: int = 0,
              haystack: str | None = None, params: Iterable[str] | Mapping = (),
              shard: str | tuple[int, int] | None = None, verify: str | None = None) -> Grid:
        """A grid from the CLI's spellings (a value that is not a string is taken as parsed):
        probes "niah,kv"; lengths "1k,4k" or "1k..1M:x2"; depths "0,50,100" or "0..100:11";
        params "FAMILY.NAME=VALUE" pairs (or {family: {name: value}}); shard "i/n".
        UserError, naming the input and the fix, on the first bad one."""
        from ctxprobe.sweep.params import family_params

        families = [f.strip() for f in probes.split(",") if f.strip()] if isinstance(probes, str) \
            else list(probes)
        check_families(families)
        lengths = parse_lengths(lengths) if isinstance(lengths, str) else list(lengths)
        depths = parse_depths(depths) if isinstance(depths, str) else list(depths)
        shard = shard if isinstance(shard, tuple) else parse_shard(shard)
        return cls(families=families, lengths=lengths, depths=depths, samples=samples, seed=seed,
                   haystack=haystack, params=family_params(params, families), shard=shard,
                   verify=verify)

    def cells(self) -> list[Cell]:
        """This shard's cells, in canonical order."""
        return shard(plan_cells(list(self.families), list(self.lengths), list(self.depths), self.samples),
                     *self.shard)


def check_families(families) -> None:
    from ctxprobe.probes import FAMILIES

    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise UserError(f"unknown probe family {unknown[0]!r}: choose from "
                        f"{', '.join(sorted(FAMILIES))}")


@dataclass(frozen=True, order=True)
class Cell:
    family: str
    length: int
    depth: float
    sample: int

    @property
    def key(self) -> tuple:
        return (self.family, self.length, self.depth, self.sample)


def plan_cells(families: list[str], lengths: list[int], depths: list[float],
               samples: int) -> list[Cell]:
    """Every cell of the grid, in canonical order (duplicates in the inputs dropped)."""
    if samples < 1:
        raise UserError(f"--samples must be at least 1, got {samples}")
    if not families or not lengths or not depths:
        raise UserError("the grid is empty: give at least one --probe, --lengths and --depths value")
    return [Cell(f, int(n), float(d), s)
            for f in dict.fromkeys(families)
            for n in sorted(set(lengths))
            for d in sorted(set(depths))
            for s in range(samples)]


def parse_shard(spec: str | None) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n; None -> (0, 1)."""
    if spec is None:
        return 0, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise UserError(f"bad --shard {spec!r}: use i/n, e.g. 0/4 for the first of four") from None
    if not (n >= 1 and 0 <= i < n):
        raise UserError(f"bad --shard {spec!r}: need 0 <= i < n, e.g. 0/4 .. 3/4")
    return i, n


def shard(cells: list[Cell], index: int, count: int) -> list[Cell]:
    """Every count-th cell starting at index: balanced, and disjoint across the shards."""
    return cells[index::count]


def pending(cells: Iterable[Cell], done: set[tuple]) -> list[Cell]:
    """The cells whose key is not among those already stored."""
    return [c for c in cells if c.key not in done]


def work_order(cells: list[Cell]) -> list[list[Cell]]:
    """Batches of cells whose probes are built together (one sample at one length), each in the
    order that lets a server's prefix cache reuse the most (vLLM and SGLang keep prefixes,
    llama.cpp's server its slot's last prompt).

    A sample's haystack is the same text at every depth and length, and only the needle and what
    follows it differ: two probes of one family and sample share their prompt up to the earlier
    needle (probes of different families share little, their instructions differ). So a batch
    runs family by family with depths in order, which makes each request share everything
    before the nearer of its needle and the previous one's (a monotone order reaches the most a
    one-prompt cache can: all needle offsets but the largest). Every other length of a sample
    runs in reverse, so that a length's last request (its deepest needle) is followed by the
    next length's deepest needle, which shares the whole haystack up to it. docs/serving.md
    counts what this saves.
    """
    batches: dict[tuple, list[Cell]] = {}
    for c in sorted(cells, key=lambda c: (c.sample, c.length, c.family, c.depth)):
        batches.setdefault((c.sample, c.length), []).append(c)
    out, turn = [], {}
    for (sample, _), batch in batches.items():
        reverse = turn.get(sample, False)
        turn[sample] = not reverse
        out.append(batch[::-1] if reverse else batch)
    return out


def shared_prefix_tokens(prompts) -> int:
    """Tokens that each prompt shares with the one before it, summed: the prefill a server that
    caches its last prompt skips when `prompts` (token id sequences) arrive in this order."""
    total, previous = 0, None
    for ids in prompts:
        if previous is not None:
            n = 0
            for a, b in zip(previous, ids):
                if a != b:
                    break
                n += 1
            total += n
        previous = ids
    return total


def group_by_context(probes: list) -> list[list]:
    """Probes with identical context_ids, grouped in first-seen order."""
    groups: dict[tuple, list] = {}
    for p in probes:
        groups.setdefault(tuple(p.context_ids), []).append(p)
    return list(groups.values())


def build_probes(cells: list[Cell], *, seed: int, tokenizer, haystack=None,
                 family_params: dict | None = None, verify: str | None = None
                 ) -> Iterator[tuple[Cell, object]]:
    """(cell, probe) for each cell, built with the backend's tokenizer so lengths are exact;
    verify: the exactness check (probes/exactness.py; None: its default)."""
    from ctxprobe.probes import make_probe

    params = family_params or {}
    for c in cells:
        yield c, make_probe(c.family, c.length, c.depth, seed=seed, sample=c.sample,
                            tokenizer=tokenizer, haystack=haystack, verify=verify,
                            **params.get(c.family, {}))
