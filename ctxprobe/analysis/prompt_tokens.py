"""Prompt tokens as the server counted them (`usage.prompt_tokens`) against ctxprobe's count.

A server adds its chat template's tokens (and a BOS) to every prompt: the same number for every
cell of a run, so the difference at the run's shortest length is taken as the template's
tokens. A cell whose difference departs from it by more than TOLERANCE tokens (a BPE merge at
the template's edge) was not read as ctxprobe built it: the server cut the prompt to its context
window (it counts fewer at long lengths), or tokenizes with another vocabulary (the gap grows
with length), or injected text of its own. Its score then does not measure that length.
"""

from __future__ import annotations

import statistics

TOLERANCE = 2


def template_tokens(cells) -> int | None:
    """The server's tokens beyond ctxprobe's at the shortest length (the median there); None
    when the server reported no counts."""
    counted = _counted(cells)
    if not counted:
        return None
    shortest = min(c["length"] for c in counted)
    return int(statistics.median_low(_diff(c) for c in counted if c["length"] == shortest))


def mismatched(cells, tolerance: int = TOLERANCE) -> list[dict]:
    """The cells whose server count departs from ctxprobe's by more than the template's tokens."""
    template = template_tokens(cells)
    if template is None:
        return []
    if template < -tolerance:        # fewer even at the shortest length: every cell is off
        return _counted(cells)
    return [c for c in _counted(cells) if abs(_diff(c) - template) > tolerance]


def warnings(cells, tolerance: int = TOLERANCE) -> list[str]:
    """One line for a run whose server counted some prompts otherwise (none when all agree)."""
    bad = mismatched(cells, tolerance)
    if not bad:
        return []
    worst = max(bad, key=lambda c: abs(_diff(c)))
    return [f"warning: {len(bad)} cell(s): the server counted the prompt differently from ctxprobe by "
            f"more than its chat template's {template_tokens(cells)} token(s) (worst: length "
            f"{worst['length']}, depth {worst['depth']:g}%: server {worst['server_prompt_tokens']:,}, "
            f"ctxprobe {worst['prompt_tokens']:,}); the server may have cut the prompt to its context "
            "window or tokenize differently, so those scores do not measure their length"]


def _counted(cells) -> list[dict]:
    return [c for c in cells if c.get("server_prompt_tokens") is not None
            and c.get("prompt_tokens") is not None and not c.get("error")]


def _diff(cell) -> int:
    return int(cell["server_prompt_tokens"]) - int(cell["prompt_tokens"])
