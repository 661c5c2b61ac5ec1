"""The native runner: loading with weights placed, layer-by-layer prefill, teacher-forced scoring,
greedy generation, the plain-forward references, memory plans."""

from ctxprobe.runner.load import load_model
from ctxprobe.runner.loop import Prefilled, generate, prefill
from ctxprobe.runner.memory import Settings
from ctxprobe.runner.reference import logits, score_reference
from ctxprobe.runner.score import BranchScore, score

__all__ = ["BranchScore", "Prefilled", "Settings", "generate", "load_model", "logits", "prefill", "score",
           "score_reference"]
