"""What a probe family produces before assembly: the fixed texts, the needles, the answers."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Parts:
    instruction: str                 # starts the prompt; ends with a blank line
    question: str                    # follows the haystack; starts with a newline
    answer_prefix: str               # opens the answer so base models answer directly
    needles: list[tuple[str, float]]  # (text starting with a space, depth fraction in [0, 1])
    answers: list[str]               # gold answers
    answer_text: str                 # what a correct model writes after the prompt
    haystack: object = None          # a family's own haystack (kv, cwe); None = the user's
    answers_by_position: bool = False  # list answers in the order their needles appear
    answer_joiner: str = ", "
    meta: dict = field(default_factory=dict)
