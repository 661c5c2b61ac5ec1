"""The probe families by name, with a one-line description and typed parameters each.

Each family says which path to its answer it leaves open (`path`): "literal" (the question
repeats the needle's words, as in RULER: attention can find the needle by string overlap),
"latent" (no content word in common: only the association leads there), "literal-control"
(a latent family's needle asked with its words, on the same grid) or "coreference" (many
identical requests; only their order tells them apart). `relative` families get an effective
length relative to the model's own short-context score beside the absolute one.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

from . import cwe, kv_retrieval, mrcr, niah, nolima, vartrack

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _coerce(default, value):
    if isinstance(default, bool) and isinstance(value, str):
        if value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(value)
    return type(default)(value)


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    build: Callable  # build(ctx, depth_fraction, **params) -> Parts
    path: str = "literal"      # literal | latent | literal-control | coreference
    # Knobs added after the family's first release: left out of the probe's seed and hash
    # while at their defaults, so that earlier probes (and stored runs) stay the same.
    late: tuple[str, ...] = ()

    @property
    def relative(self) -> bool:
        """Whether its effective length is also read relative to the short-context score."""
        return self.path != "literal"

    def identity(self, params: dict) -> dict:
        """params less the late knobs left at their defaults."""
        defaults = self.params
        return {k: v for k, v in params.items() if not (k in self.late and v == defaults[k])}

    @property
    def params(self) -> dict:
        """Parameter name -> default, read from the builder's signature."""
        sig = inspect.signature(self.build)
        return {n: p.default for n, p in list(sig.parameters.items())[2:]}

    def check_params(self, given: dict) -> dict:
        """Defaults overlaid with `given`, coerced to the defaults' types (the CLI passes str)."""
        defaults = self.params
        out = dict(defaults)
        for name, value in given.items():
            if name not in defaults:
                accepted = ", ".join(defaults) or "none"
                raise ValueError(
                    f"family {self.name} has no parameter {name!r}; accepted parameters: {accepted}"
                )
            try:
                out[name] = _coerce(defaults[name], value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"parameter {name}={value!r} of family {self.name} must be "
                    f"{type(defaults[name]).__name__}"
                ) from None
        return out


_NEAR = ("near_misses", "placement")

FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("niah", "one needle: the special magic number (or word, uuid) for a key", niah.niah,
           late=_NEAR),
    Family("multikey", "the asked needle among distractor needles with other keys", niah.multikey,
           late=_NEAR),
    Family("multivalue", "one key with several values; all values must be recalled", niah.multivalue),
    Family("multiquery", "several needles with different keys; all keys are asked", niah.multiquery),
    Family("kv", "a JSON object of UUID key-value pairs; the value of one key is asked", kv_retrieval.kv),
    Family("vartrack", "chains of variable assignments; list every variable holding a value",
           vartrack.vartrack),
    Family("cwe", "common-words extraction: the most frequent words of a long word list", cwe.cwe),
    Family("nolima", "which character did X: the question shares no content word with the "
           "needle, only a latent association (landmark -> city, dish -> country, ...)",
           nolima.nolima, path="latent"),
    Family("nolima-literal", "nolima's literal control: the same needle, asked with the "
           "entity named", nolima.nolima_literal, path="literal-control"),
    Family("mrcr", "multi-round coreference: a long chat with 2-8 identical requests; return "
           "the i-th reply, prefixed with a random string", mrcr.mrcr, path="coreference"),
]}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"unknown probe family {name!r}; choose one of: {', '.join(FAMILIES)}"
        ) from None
