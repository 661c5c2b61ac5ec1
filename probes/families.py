"""The probe families by name, with a one-line description and typed parameters each."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

from probes import cwe, kv, niah, vartrack


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    build: Callable  # build(ctx, depth_fraction, **params) -> Parts

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
                out[name] = type(defaults[name])(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"parameter {name}={value!r} of family {self.name} must be "
                    f"{type(defaults[name]).__name__}"
                ) from None
        return out


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("niah", "one needle: the special magic number (or word, uuid) for a key", niah.niah),
    Family("multikey", "the asked needle among distractor needles with other keys", niah.multikey),
    Family("multivalue", "one key with several values; all values must be recalled", niah.multivalue),
    Family("multiquery", "several needles with different keys; all keys are asked", niah.multiquery),
    Family("kv", "a JSON object of UUID key-value pairs; the value of one key is asked", kv.kv),
    Family("vartrack", "chains of variable assignments; list every variable holding a value",
           vartrack.vartrack),
    Family("cwe", "common-words extraction: the most frequent words of a long word list", cwe.cwe),
]}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"unknown probe family {name!r}; choose one of: {', '.join(FAMILIES)}"
        ) from None
