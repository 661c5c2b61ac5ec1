"""The visible answer of a reasoning model's reply, and whether the token limit cut it off.

Thinking models return their reasoning either in the text (`<think>...</think>` before the
answer: DeepSeek-R1, Qwen3 and QwQ served raw) or beside it in the reply (`reasoning_content`:
vLLM and SGLang with a reasoning parser, DeepSeek's API; `reasoning`: OpenRouter, Ollama, newer
vLLM). Only the answer after the reasoning is scored.

A reply that stopped on the token limit (`finish_reason` "length") with no answer yet, or inside
an unclosed `<think>`, is *truncated*: the model never answered, so the cell is marked and left
out of the scores (raise --reasoning-budget) rather than counted as a wrong answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_OPEN = "<think>"
_CLOSE = "</think>"
REASONING_FIELDS = ("reasoning_content", "reasoning")


@dataclass
class Answer:
    text: str                  # what is scored
    reasoning: str             # the reasoning, from the text or the reply's field ("" if none)
    finish_reason: str | None  # as the server said: "stop", "length", ...
    truncated: bool            # cut off by the token limit before any answer


def split_reasoning(text: str) -> tuple[str, str, bool]:
    """(answer, reasoning, unclosed): `<think>` blocks removed from `text`. A `</think>` with no
    opening tag (templates that open the block in the prompt, as Qwen3's and R1's do) ends
    reasoning that started with the text; an unclosed `<think>` leaves no answer."""
    if _OPEN not in text and _CLOSE not in text:
        return text, "", False                 # no reasoning in the text: the answer as sent
    thoughts = [m.group(1) for m in _THINK.finditer(text)]
    answer = _THINK.sub("", text)
    if _CLOSE in answer and _OPEN not in answer.split(_CLOSE, 1)[0]:
        head, answer = answer.split(_CLOSE, 1)
        thoughts.insert(0, head)
    unclosed = _OPEN in answer
    if unclosed:
        answer, tail = answer.split(_OPEN, 1)
        thoughts.append(tail)
    return answer.strip(), "\n".join(t.strip() for t in thoughts if t.strip()), unclosed


def answer_of(text: str, fields: dict, finish_reason) -> Answer:
    """The answer of one reply: `text` is its content (chat) or text (completions), `fields` the
    message (or choice) it came in, which may carry the reasoning beside it."""
    answer, inline, unclosed = split_reasoning(text)
    beside = next((fields[k] for k in REASONING_FIELDS if isinstance(fields.get(k), str) and fields[k]), "")
    reasoning = "\n".join(r for r in (beside.strip(), inline) if r)
    finish = finish_reason if isinstance(finish_reason, str) else None
    truncated = finish == "length" and (unclosed or not answer)
    return Answer(answer, reasoning, finish, truncated)
