"""The native backend: a local HF-format checkpoint run by ctxprobe's own runner.

Probes with a fixed gold answer are teacher-forced: the gold answer, tokenized as it follows
the prompt, rides behind the context in the same pass, and the cell records whether every
argmax equals the gold token (`exact`), the answer's log-probability and its first token's
rank. Probes without a fixed answer are answered by greedy generation.

With a chat template (and unless turned off), the probe's instruction, haystack and question
are the user message and the assistant turn opens with the answer prefix. The probe's length
counts its own tokens; the template's tokens come on top and show in `prompt_tokens`.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from ctxprobe.backends.base import CellResult

_SENTINEL = "\x00CTXPROBE-USER-MESSAGE\x00"
_MB = 1 << 20


def checkpoint_fingerprint(root: str | Path) -> str:
    """sha256 over config.json and, for each weight file, its name, size, first and last MB.

    Reading whole multi-GB shards would take minutes; size plus both ends catches a changed,
    truncated or swapped file in well under a second.
    """
    root = Path(root)
    h = hashlib.sha256()
    config = root / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    for file in sorted(root.glob("*.safetensors")):
        size = file.stat().st_size
        h.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as f:
            h.update(f.read(_MB))
            if size > _MB:
                f.seek(max(_MB, size - _MB))
                h.update(f.read(_MB))
    return "sha256:" + h.hexdigest()[:32]


def answer_ids_after(tokenizer, prompt: str, prompt_ids: list[int], answer_text: str) -> list[int]:
    """The gold answer's tokens as they follow the prompt: encode(prompt + answer) minus the
    prompt's tokens. If the two merge across the boundary, the answer is encoded alone."""
    full = tokenizer.encode(prompt + answer_text)
    n = len(prompt_ids)
    if full[:n] == list(prompt_ids) and len(full) > n:
        return full[n:]
    return tokenizer.encode(answer_text)


class NativeBackend:
    kind = "native"
    concurrency = 1  # one model, one pass at a time

    def __init__(self, path: str, *, chat_template: bool = True, max_new_tokens: int = 32,
                 device: str | None = None, dtype: str | None = None):
        from ctxprobe.models import load_model

        self.path = str(path)
        self.model = load_model(path, device=device, dtype=dtype)
        self.tokenizer = self.model.tokenizer
        if self.tokenizer is None:
            from ctxprobe.errors import UserError

            raise UserError(f"checkpoint {path} has no tokenizer.json; add the model's tokenizer "
                            "so ctxprobe can count lengths in its tokens")
        self.max_new_tokens = max_new_tokens
        self.use_template = bool(chat_template and self.model.chat_template)
        self._head = self._tail = ""
        if self.use_template:
            rendered = self.model.apply_chat_template([{"role": "user", "content": _SENTINEL}])
            self._head, self._tail = rendered.split(_SENTINEL)
        self.model_fingerprint = checkpoint_fingerprint(path)
        template_hash = hashlib.sha256((self.model.chat_template or "").encode()).hexdigest()[:16]
        self.settings = {"kind": "native", "path": self.path, "chat_template": self.use_template,
                         "template_sha256": template_hash if self.use_template else None,
                         "max_new_tokens": max_new_tokens, "device": str(self.model.device),
                         "dtype": str(self.model.dtype).replace("torch.", "")}
        from ctxprobe.runner import distributed

        if distributed.active() is not None:  # provenance only: a sharded run resumes a one-process run
            self.settings["ranks"] = distributed.active().size
        # The dtype changes the numbers (a bf16 rerun must not resume, and so silently reuse, an
        # fp32 run's cells); the device does not count, so a run resumes on another machine.
        self.identity = {"kind": "native", "chat_template": self.use_template,
                         "template_sha256": self.settings["template_sha256"],
                         "max_new_tokens": max_new_tokens, "dtype": self.settings["dtype"]}
        eos = self.model.special_tokens.get("eos_token")
        eos_ids = self.tokenizer.encode(eos) if eos else []
        self._stop_ids = eos_ids if len(eos_ids) == 1 else None

    # -- rendering -----------------------------------------------------------------------

    def render(self, probe) -> tuple[list[int], list[int]]:
        """-> (context ids, question ids) of the prompt the model reads."""
        if not self.use_template:
            return list(probe.context_ids), list(probe.question_ids)
        context = self.tokenizer.encode(self._head) + list(probe.context_ids)
        question = self.tokenizer.encode(probe.question + self._tail + probe.answer_prefix)
        return context, question

    # -- answering -----------------------------------------------------------------------

    def run_group(self, probes: list) -> list[CellResult]:
        start = time.perf_counter()
        forced = [p for p in probes if getattr(p, "answer_text", None)]
        results = {id(p): r for p, r in zip(forced, self._teacher_force(forced))} if forced else {}
        for p in probes:
            if id(p) not in results:
                results[id(p)] = self._generate(p)
        elapsed = (time.perf_counter() - start) / len(probes)
        out = []
        for p in probes:
            r = results[id(p)]
            r.latency = r.latency if r.latency is not None else elapsed
            out.append(r)
        return out

    def _teacher_force(self, probes: list) -> list[CellResult]:
        context, _ = self.render(probes[0])
        branches = []
        for p in probes:
            ctx, question = self.render(p)
            assert ctx == context, "the planner groups only probes with one context"
            prompt_ids = ctx + question
            prompt_text = p.prompt
            if self.use_template:
                prompt_text = (self._head + p.instruction + p.context + p.question + self._tail
                               + p.answer_prefix)
            branches.append((question, answer_ids_after(self.tokenizer, prompt_text, prompt_ids,
                                                        p.answer_text)))
        scores = self._score(context, branches)
        return [CellResult(response=self.tokenizer.decode(s.greedy), exact=bool(s.exact),
                           logprob=float(s.logprob), first_rank=int(s.first_rank),
                           prompt_tokens=len(context) + len(q))
                for s, (q, _) in zip(scores, branches)]

    def _generate(self, probe) -> CellResult:
        start = time.perf_counter()
        context, question = self.render(probe)
        prompt = context + question
        if hasattr(self.model, "generate"):
            ids = self.model.generate(prompt, self.max_new_tokens, stop_ids=self._stop_ids)
        else:
            from ctxprobe.runner import generate

            ids = generate(self.model, prompt, self.max_new_tokens, stop_ids=self._stop_ids)
        if self._stop_ids and ids and ids[-1] in self._stop_ids:
            ids = ids[:-1]
        return CellResult(response=self.tokenizer.decode(ids), prompt_tokens=len(prompt),
                          latency=time.perf_counter() - start)

    def _score(self, context, branches):
        if hasattr(self.model, "score"):
            return self.model.score(context, branches)
        from ctxprobe.runner import score

        return score(self.model, context, branches)

    def close(self) -> None:
        self.model = None
