"""Scoring a free-form response against a probe's gold answers.

strict:  the response, stripped, is exactly the gold answer(s) in order, as a continuation of
         the answer prefix. A chat model that repeats the prefix, quotes or bolds the answer,
         separates several answers with commas or "and", or ends with a full stop still
         passes; anything else fails.
lenient: the fraction of gold answers found anywhere in the response, case-insensitively
         (RULER's string_match_all), so "The number is 1234567." scores 1.0.
"""

from __future__ import annotations

import re

_TRAILING = " \t\r\n.,;:!?\"'`)]}*"
_LEADING = " \t\r\n\"'`([{*"  # quotes, brackets and markdown emphasis around an answer
_SEPARATORS = re.compile(r"(?:\s*[,;\n]\s*|\s+and\s+|\s+)", re.IGNORECASE)


def _normalize(text: str) -> str:
    return text.strip().rstrip(_TRAILING).lstrip(_LEADING)


def strict_score(response: str, answers: list[str], answer_prefix: str = "") -> float:
    """1.0 when the response reproduces the gold answers exactly and in order, else 0.0."""
    if not answers:
        raise ValueError("strict_score needs at least one gold answer")
    text = response.strip()
    prefix = answer_prefix.strip()
    if prefix and text.lower().startswith(prefix.lower()):
        text = text[len(prefix):]  # chat models often restate the answer prefix
    text = _normalize(text)
    gold = [_normalize(a) for a in answers]
    if len(gold) == 1:
        return float(text == gold[0])
    if text == " ".join(gold) or text == ", ".join(gold):
        return 1.0
    parts = [p for p in _SEPARATORS.split(text) if p]
    gold_parts = [p for a in gold for p in _SEPARATORS.split(a) if p]
    return float([_normalize(p) for p in parts] == gold_parts)


def lenient_score(response: str, answers: list[str]) -> float:
    """The fraction of gold answers that appear anywhere in the response."""
    if not answers:
        raise ValueError("lenient_score needs at least one gold answer")
    text = response.lower()
    return sum(a.strip().lower() in text for a in answers) / len(answers)


def first_informative(pieces: list[str]) -> int:
    """The index of the first gold-answer token that is not whitespace: the first one whose rank
    says whether the model knows the answer (" 1234567" often starts with a lone space, ranked
    1 whatever follows). 0 when every piece is whitespace."""
    return next((i for i, piece in enumerate(pieces) if piece.strip()), 0)
