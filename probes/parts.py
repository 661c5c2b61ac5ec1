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
    # Per needle: "needle" (asked) or the kind of distractor ("other-key", "similar-key",
    # "lure", ...); None means every needle is asked.
    roles: list[str] | None = None
    asked: int = 0                   # the needle whose depth is the probe's depth
    grade: object = None             # response -> score in [0, 1], for families with their own grader
    messages: object = None          # Assembly -> chat messages, for probes that are a conversation
    chat: str | None = None          # the chat format's name, for those
