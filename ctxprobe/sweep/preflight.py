"""`ctxprobe run --dry-run`: what a sweep would send, counted before anything is sent.

Every pending cell's probe is built with the backend's own tokenizer (for a server, its
/tokenize: the only requests a dry run makes) and counted as the model will read it: the native
runner's chat template included; over HTTP the server's chat template adds a few tokens per
cell that only the server knows (its `usage.prompt_tokens`, stored per cell by a real run).
Output tokens are counted at the request's limit (--max-new-tokens plus --reasoning-budget),
the most a server can bill; a model that stops early costs less. Nothing is stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MILLION = 1_000_000


@dataclass
class Preflight:
    cells: int
    already_stored: int
    prompt_tokens: int          # all pending cells together
    longest_cell: int           # prompt tokens of the longest pending cell
    output_tokens: int          # at most: cells x the request's token limit
    output_per_cell: int
    price_in: float | None      # per million tokens
    price_out: float | None

    @property
    def cost(self) -> float | None:
        if self.price_in is None and self.price_out is None:
            return None
        return (self.prompt_tokens * (self.price_in or 0.0)
                + self.output_tokens * (self.price_out or 0.0)) / MILLION

    def lines(self) -> list[str]:
        out = [f"dry run: {self.cells} cell(s) to run ({self.already_stored} already stored); nothing "
               "sent but tokenizer calls, nothing stored",
               f"prompt tokens: {self.prompt_tokens:,} in total, {self.longest_cell:,} at the longest cell",
               f"output tokens: at most {self.output_tokens:,} ({self.output_per_cell:,} per cell)"]
        if self.cost is not None:
            out.append(f"cost: at most {self.cost:,.4f} at {_price(self.price_in)} in and "
                       f"{_price(self.price_out)} out per million tokens")
        return out


def _price(value: float | None) -> str:
    return "0" if value is None else f"{value:g}"


def check_price(value: float | None, flag: str) -> None:
    from ctxprobe.errors import UserError

    if value is not None and not (math.isfinite(value) and value >= 0):
        raise UserError(f"{flag} must be a price per million tokens, 0 or more, got {value}")


def preflight(backend, grid, todo: list, *, already_stored: int, price_in: float | None = None,
              price_out: float | None = None) -> Preflight:
    """Count the prompt and output tokens of the cells `todo` of `grid` on `backend`."""
    from ctxprobe.sweep.building import probe_groups

    total = longest = cells = 0
    render = getattr(backend, "render", None)   # native: the prompt as its chat template wraps it
    for group in probe_groups(todo, grid, backend.tokenizer):
        for _, probe in group:
            if render is not None:
                context, question = render(probe)
                n = len(context) + len(question)
            else:
                n = len(probe.token_ids)
            total += n
            longest = max(longest, n)
            cells += 1
    per_cell = getattr(backend, "max_tokens", None) or backend.max_new_tokens
    return Preflight(cells=cells, already_stored=already_stored, prompt_tokens=total,
                     longest_cell=longest, output_tokens=cells * per_cell, output_per_cell=per_cell,
                     price_in=price_in, price_out=price_out)


def dry_run_todo(db, backend, grid, *, model_spec: str, name: str | None) -> tuple[list, int]:
    """(cells a real run would answer now, cells already stored), read without writing: from the
    run a real invocation would resume, when the database and that run exist."""
    from pathlib import Path

    from ctxprobe.store import Store
    from ctxprobe.sweep.cells import pending
    from ctxprobe.sweep.run import default_run_name, run_settings

    cells = grid.cells()
    if not Path(db).is_file():
        return cells, 0
    name = name or default_run_name(model_spec, backend, run_settings(grid, backend))
    with Store(db, readonly=True) as store:
        run = store.find_run(name)
        done = store.done_keys(run.id) if run is not None else set()
    todo = pending(cells, done)
    return todo, len(cells) - len(todo)
