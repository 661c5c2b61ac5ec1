"""What every backend gives the sweep: a tokenizer for exact-length probes, provenance for the
run row, `prepare` for the longest cell, and `run_group`, which answers a group of probes that
share one context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass
class CellResult:
    """A backend's answer to one probe, before scoring against the gold answers."""

    response: str = ""
    # "generated": `response` is what the model wrote; "teacher-forced": it is the argmax at each
    # gold-answer position with the gold answer fed in (a per-position guess, not a text).
    response_kind: str = "generated"
    generation: str | None = None    # teacher-forced and failed: the real greedy output, bounded
    exact: bool | None = None        # teacher-forced: every argmax equals the gold token
    logprob: float | None = None     # teacher-forced: log-probability of the gold answer
    first_rank: int | None = None    # teacher-forced: rank of the gold answer's first token
    prompt_tokens: int | None = None
    latency: float | None = None     # seconds
    error: str | None = None         # set when the cell failed; the sweep retries it next time
    # teacher-forced: rank of the first gold token that is not whitespace (first_rank ranks the
    # first token, which for " 1234" is often the space: rank 1 whether or not the model knows)
    informative_rank: int | None = None
    server_prompt_tokens: int | None = None  # the prompt as the server counted it (usage)
    finish_reason: str | None = None  # the server's: "stop", "length", ...
    truncated: bool = False           # cut off by the token limit before any answer: not scored
    reasoning_tokens: int | None = None
    output_tokens: int | None = None  # generated tokens, reasoning included
    ttft: float | None = None         # streamed: seconds to the first token
    decode_rate: float | None = None  # streamed: output tokens per second after the first
    router_trace: object | None = None  # native --router-trace: the prompt's RouterTrace (router_trace.py)


class Backend(Protocol):
    kind: str                 # "native" | "http"
    tokenizer: object         # the probes tokenizer protocol: encode, decode, name, fingerprint
    model_fingerprint: str
    settings: dict            # stored in the run row: never a secret
    identity: dict            # the settings that make two runs' cells comparable
    concurrency: int          # how many groups the sweep may hand over at once

    def prepare(self, length: int, samples) -> None:
        """Before the first group: get ready for cells of up to `length` tokens (the native runner
        plans its memory and loads its weights; a server does nothing). `samples` iterates probes
        that show the tokens a cell adds around its length (ctxprobe.sweep.longest_pending)."""

    def run_group(self, probes: list) -> list[CellResult]:
        """Answer probes that share one context (same context_ids), in order."""

    def close(self) -> None:
        ...
