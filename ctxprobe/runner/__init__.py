"""The native runner: layer-by-layer prefill, teacher-forced scoring, greedy generation, memory plans."""

from ctxprobe.runner.generate import generate
from ctxprobe.runner.prefill import Prefilled, Settings, prefill
from ctxprobe.runner.score import BranchScore, score, score_reference

__all__ = ["BranchScore", "Prefilled", "Settings", "generate", "prefill", "score", "score_reference"]
