"""The native backend: a local HF-format checkpoint run by ctxprobe's own runner.

Probes with a fixed gold answer are teacher-forced: the gold answer, tokenized as it follows
the prompt, rides behind the context in the same pass, and the cell records whether every
argmax equals the gold token (`exact`), the answer's log-probability and its first token's
rank. Probes without a fixed answer are answered by greedy generation.

With a chat template (and unless turned off), the probe's instruction, haystack and question
are the user message and the assistant turn opens with the answer prefix. The probe's length
counts its own tokens; the template's tokens come on top and show in `prompt_tokens`.

With memory budgets (`ctxprobe run --gpu-memory/--host-memory/--offload-dir`), `prepare(length,
samples)` plans for the longest cell still to run (the sweep finds it) before any weight is read
(ctxprobe/runner/memory.py), loads the weights in the tier that plan chose, and every pass runs
by the plan for its own length.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from ctxprobe.backends.base import CellResult
from ctxprobe.backends.options import MemoryBudgets
from ctxprobe.backends.threads import ThreadPlan
from ctxprobe.errors import UserError
from ctxprobe.models.chat import render_chat

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


@dataclass
class Extent:
    """The largest pass of a sweep as the planner sees it."""
    prefill_tokens: int     # tokens prefilled (chat template included)
    extra_tokens: int       # tokens riding behind them: question + answer branch, or generated
    keep_kv: bool           # generation keeps every layer's KV


class NativeBackend:
    kind = "native"
    concurrency = 1  # one model, one pass at a time

    def __init__(self, path: str, *, chat_template: bool = True, max_new_tokens: int = 32,
                 device: str | None = None, dtype: str | None = None, memory: MemoryBudgets | None = None,
                 threads: int | None = None,
                 generate_failing: int = 0, router_trace: bool = False, world=None):
        """memory=None loads the weights now and plans each pass from the free memory then (as
        `prefill` does alone); with budgets, nothing of the weights is read until `prepare` (or the
        first pass) has planned where they go.

        generate_failing: for a teacher-forced cell that fails, also generate up to this many tokens
        greedily, decoding on from the scored pass's K/V, and keep it as the cell's `generation`: the teacher-forced
        `response` is the argmax at each gold position with the gold answer fed in, which is not what
        the model writes once its first wrong token is its own. 0: off. Under torchrun every rank
        reads the same logits, so all agree on which cells failed and generate together. Left out
        (None) for a pass whose kept KV cannot fit the memory budgets.

        router_trace: record each cell's router trace over its prompt's prefill (CellResult.router_trace,
        ctxprobe/router_trace.py); UserError for a model without MoE layers.

        world: under torchrun, the World every pass is sharded over (ctxprobe.runner.distributed);
        None: this process alone."""
        from ctxprobe.models.loader import parse_dtype, read_config, read_template
        from ctxprobe.runner.load import pick_device
        from ctxprobe.runner.memory import RunPlanner, local_ranks

        self.path = str(path)
        root = Path(path)
        config = read_config(root)
        self.device = pick_device(device)
        self.threads = ThreadPlan(threads, self.concurrency)  # torch's CPU threads, set per pass
        self.dtype = parse_dtype(dtype or config.dtype)
        self.recorder = None
        if router_trace:
            if not any(config.moe_layers):
                raise UserError(f"--router-trace records mixture-of-experts routers, and {path} is a dense "
                                f"{config.family} model: drop --router-trace")
            from ctxprobe.backends.router_recording import PromptRecorder

            self.recorder = PromptRecorder()
        self.model = None
        self.planner = None
        if memory is None:
            self._load("resident")
        if not (root / "tokenizer.json").is_file():
            raise UserError(f"checkpoint {path} has no tokenizer.json; add the model's tokenizer "
                            "so ctxprobe can count lengths in its tokens")
        from ctxprobe.probes import load_tokenizer

        self.tokenizer = self.model.tokenizer if self.model is not None else load_tokenizer(str(root))
        self.chat_template, self.special_tokens = read_template(root)
        self.max_new_tokens = max_new_tokens
        self.generate_failing = generate_failing
        self.use_template = bool(chat_template and self.chat_template)
        self._head = self._tail = ""
        if self.use_template:
            rendered = render_chat(self.chat_template, [{"role": "user", "content": _SENTINEL}],
                                   special_tokens=self.special_tokens, where=self.path)
            self._head, self._tail = rendered.split(_SENTINEL)
        self.model_fingerprint = checkpoint_fingerprint(path)
        template_hash = hashlib.sha256((self.chat_template or "").encode()).hexdigest()[:16]
        # Conversation probes (mrcr) are built in the template and counted whole; the format
        # travels with the tokenizer, as a chat template does with an HF tokenizer.
        self.chat_format = self._chat_format(template_hash) if self.use_template else None
        self.tokenizer.chat_format = self.chat_format
        self._conversations_checked: set[str] = set()
        self.settings = {"kind": "native", "path": self.path, "chat_template": self.use_template,
                         "template_sha256": template_hash if self.use_template else None,
                         "max_new_tokens": max_new_tokens, "device": self.device,
                         "dtype": str(self.dtype).replace("torch.", ""),
                         "generate_failing": self.generate_failing}   # provenance, not identity
        if router_trace:   # provenance too: a run resumed with or without it keeps its cells
            self.settings["router_trace"] = True
        self.world = world
        if world is not None:  # provenance only: a sharded run resumes a one-process run
            self.settings["ranks"] = world.size
        if memory is not None:
            # Budgets are provenance, not identity: a rerun with other budgets resumes the run.
            self.settings["memory"] = memory.given()
            self.planner = RunPlanner(self.path, device=self.device, dtype=self.dtype, budgets=memory,
                                      ranks=world.size if world is not None else 1,
                                      local_ranks=local_ranks() if world is not None else 1)
        # The dtype changes the numbers (a bf16 rerun must not resume, and so silently reuse, an
        # fp32 run's cells); the device does not count, so a run resumes on another machine.
        self.identity = {"kind": "native", "chat_template": self.use_template,
                         "template_sha256": self.settings["template_sha256"],
                         "max_new_tokens": max_new_tokens, "dtype": self.settings["dtype"]}
        eos = self.special_tokens.get("eos_token")
        eos_ids = self.tokenizer.encode(eos) if eos else []
        self._stop_ids = eos_ids if len(eos_ids) == 1 else None

    # -- planning and loading ------------------------------------------------------------

    def prepare(self, length: int, samples) -> None:
        """Plan for a sweep whose longest cell is `length` tokens (`samples`: probes showing the
        tokens a cell adds around its length, ctxprobe.sweep.longest_pending), then load the weights
        where that plan puts them. UserError, with nothing loaded, when it cannot fit the budgets."""
        if self.planner is None or self.model is not None:
            return
        self._load_for(self.extent(length, samples))

    def extent(self, length: int, samples) -> Extent:
        """The longest pass of a sweep whose longest cell is `length` tokens, as prefill + extra
        tokens: the most chat-template tokens and question + answer tokens that any of `samples`
        (probes, each of one family and sample) shows come on top. Counting the question in the
        prefill and again in the branch keeps the plan on the safe side."""
        template_tokens, branch_tokens, generated = 0, 0, False
        for probe in samples:
            context, question = self.render(probe)
            template_tokens = max(template_tokens, len(context) + len(question) - len(probe.token_array))
            if getattr(probe, "answer_text", None):
                _, question, answer = self._branch(probe)
                branch_tokens = max(branch_tokens, len(question) + len(answer) - 1)
            else:
                generated = True
        return Extent(prefill_tokens=length + template_tokens,
                      extra_tokens=max(branch_tokens, self.max_new_tokens if generated else 0),
                      keep_kv=generated and self.max_new_tokens > 1)

    def _load_for(self, extent: Extent) -> None:
        plan = self.planner.plan_sweep(extent.prefill_tokens, extra_tokens=extent.extra_tokens,
                                       keep_kv=extent.keep_kv)
        # Provenance: where the longest pass keeps what (shorter passes may keep more on the device).
        self.settings["weights"] = plan.weights
        self.settings["longest_plan"] = {"tokens": extent.prefill_tokens, "extra_tokens": extent.extra_tokens,
                                         "chunk_tokens": plan.chunk_tokens, "hidden_tier": plan.hidden_tier,
                                         "kv_tiers": sorted(set(plan.kv_tiers))}
        self._load(plan.weights)

    def _load(self, weights: str) -> None:
        from ctxprobe.runner import load   # looked up at call time: tests count the loads

        self.model = load.load_model(self.path, device=self.device, dtype=self.dtype, weights=weights)

    def _settings(self, length: int, extra_tokens: int, keep_kv: bool):
        """The plan's settings for one pass; None (the runner plans from free memory) without budgets."""
        if self.planner is None:
            return None
        if self.model is None:   # run_group without prepare: plan the weights for this pass
            self._load_for(Extent(length, extra_tokens, keep_kv))
        return self.planner.plan(length, extra_tokens=extra_tokens, keep_kv=keep_kv).settings()

    # -- rendering -----------------------------------------------------------------------

    def _chat_format(self, template_hash: str):
        """The template as a probes ChatFormat, or None when it renders turns unalike (then
        conversation probes are refused with the reason)."""
        from ctxprobe.probes.chat import ChatFormat

        def render(messages):
            return render_chat(self.chat_template, messages, special_tokens=self.special_tokens, where=self.path)
        try:
            return ChatFormat.from_renderer(render, f"template:{template_hash}")
        except (ValueError, UserError):
            return None

    def _conversation(self, probe) -> tuple[list[int], list[int]]:
        """A conversation probe was built in this model's format: its ids are the prompt. With a
        template, its messages are rendered by the template once and must give the same text."""
        want = "transcript" if not self.use_template else getattr(self.chat_format, "name", None)
        if probe.chat != want:
            raise UserError(f"{probe.family} probe rendered as {probe.chat}, but {self.path} reads "
                            f"{want or 'a chat template that renders turns differently by position'}; "
                            "run it with --no-chat-template")
        if self.use_template and probe.hash not in self._conversations_checked:
            text = render_chat(self.chat_template, probe.messages, special_tokens=self.special_tokens,
                               where=self.path)
            if text != probe.prompt:
                raise UserError(f"{probe.family} probe: the chat template renders its messages "
                                "differently from the probe's text; run it with --no-chat-template")
            self._conversations_checked.add(probe.hash)
        return list(probe.context_ids), list(probe.question_ids)

    def render(self, probe) -> tuple[list[int], list[int]]:
        """-> (context ids, question ids) of the prompt the model reads."""
        if getattr(probe, "messages", None) is not None:
            return self._conversation(probe)
        if not self.use_template:
            return list(probe.context_ids), list(probe.question_ids)
        context = self.tokenizer.encode(self._head) + list(probe.context_ids)
        question = self.tokenizer.encode(probe.question + self._tail + probe.answer_prefix)
        return context, question

    # -- answering -----------------------------------------------------------------------

    def run_group(self, probes: list) -> list[CellResult]:
        self.threads.apply()
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

    def _branch(self, probe) -> tuple[list[int], list[int], list[int]]:
        """-> (context ids, question ids, gold answer ids as they follow the prompt)."""
        context, question = self.render(probe)
        prompt_text = probe.prompt
        if self.use_template and getattr(probe, "messages", None) is None:
            prompt_text = (self._head + probe.instruction + probe.context + probe.question + self._tail
                           + probe.answer_prefix)
        return context, question, answer_ids_after(self.tokenizer, prompt_text, context + question,
                                                   probe.answer_text)

    def _teacher_force(self, probes: list) -> list[CellResult]:
        context, _ = self.render(probes[0])
        branches = []
        for p in probes:
            ctx, question, answer = self._branch(p)
            assert ctx == context, "the planner groups only probes with one context"
            branches.append((question, answer))
        scores, trace = self._score(context, branches)
        return [CellResult(response=self.tokenizer.decode(s.greedy), response_kind="teacher-forced",
                           exact=bool(s.exact), router_trace=trace,
                           logprob=float(s.logprob), first_rank=int(s.first_rank),
                           informative_rank=self._informative_rank(s, a),
                           prompt_tokens=len(context) + len(q),
                           generation=None if s.generated is None else self._text(s.generated))
                for s, (q, a) in zip(scores, branches)]

    def _informative_rank(self, score, answer_ids) -> int | None:
        """The rank of the first gold token that is not whitespace (scoring.first_informative)."""
        from ctxprobe.scoring import first_informative

        ranks = getattr(score, "gold_ranks", None)
        if not ranks:
            return None
        return int(ranks[first_informative([self.tokenizer.decode([t]) for t in answer_ids])])

    def _generate(self, probe) -> CellResult:
        start = time.perf_counter()
        context, question = self.render(probe)
        prompt = context + question
        if self.recorder is not None:   # the model must be loaded to be watched
            self._settings(len(prompt), self.max_new_tokens, keep_kv=self.max_new_tokens > 1)
        text, trace = self._traced(len(prompt), lambda: self._greedy_text(prompt, self.max_new_tokens))
        return CellResult(response=text, prompt_tokens=len(prompt), latency=time.perf_counter() - start,
                          router_trace=trace)

    def _greedy_text(self, prompt: list[int], max_new_tokens: int) -> str:
        settings = self._settings(len(prompt), max_new_tokens, keep_kv=max_new_tokens > 1)
        from ctxprobe.runner import generate

        return self._text(generate(self.model, prompt, max_new_tokens, stop_ids=self._stop_ids, settings=settings,
                                   ring=self.world))

    def _text(self, ids: list[int]) -> str:
        """Generated ids as text, without the stop token that ended them."""
        if self._stop_ids and ids and ids[-1] in self._stop_ids:
            ids = ids[:-1]
        return self.tokenizer.decode(ids)

    def _score(self, context, branches):
        """-> (a BranchScore per branch, the context's RouterTrace or None)."""
        from ctxprobe.runner import score

        # The runner does not run a branch's last answer token (it predicts nothing scored).
        riders = max(len(q) + len(a) - 1 for q, a in branches)
        if self.generate_failing:
            # Failing branches decode on from this pass: it keeps every layer's K/V. When that
            # cannot fit the memory budgets, the cells are scored without their generation.
            extra = max(riders, max(len(q) for q, _ in branches) + self.generate_failing)
            try:
                settings = self._settings(len(context), extra, keep_kv=True)
                return self._traced(len(context), lambda: score(
                    self.model, context, branches, settings=settings, ring=self.world,
                    continue_failing=self.generate_failing, stop_ids=self._stop_ids))
            except UserError:
                pass
        settings = self._settings(len(context), riders, keep_kv=False)
        return self._traced(len(context), lambda: score(self.model, context, branches, settings=settings,
                                                        ring=self.world))

    def _traced(self, prompt_tokens: int, run):
        """run() (one pass over a prompt of prompt_tokens) -> (its result, the prompt's RouterTrace,
        or None without --router-trace). Tokens past the prompt (branches, generated) are not counted."""
        if self.recorder is None:
            return run(), None
        from ctxprobe.models.router_tap import observe_routers

        with observe_routers(self.model, self.recorder) as layers:
            self.recorder.start(prompt_tokens, layers, self.model.config.n_experts, self.model.device)
            if not layers:
                raise UserError(f"--router-trace: the MoE blocks of {self.path} do not report their routing "
                                "(models/router_tap.py); drop --router-trace")
            result = run()
        return result, self.recorder.trace(self.world)

    def close(self) -> None:
        self.model = None
