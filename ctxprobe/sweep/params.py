"""Probe-family parameters for a sweep (`run --param`), parsed as `probes show/export --param` are.

`FAMILY.NAME=VALUE` sets one family's parameter; `NAME=VALUE` sets it for every family of the
sweep that has it. Values are checked and typed by the family (probes/families.py); a value equal
to the family's default is dropped, so spelling out a default does not make another run.
"""

from __future__ import annotations

from collections.abc import Mapping

from ctxprobe.errors import UserError


def parse_pairs(pairs) -> dict:
    """('NAME=VALUE', ...) -> {NAME: 'VALUE'} (the last of a repeated name wins)."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UserError(f"bad --param {pair!r}: write NAME=VALUE, e.g. --param value_kind=uuid")
        out[name.strip()] = value.strip()
    return out


def family_params(pairs, families: list[str]) -> dict:
    """('multikey.value_kind=uuid', 'hops=6', ...) -> {family: {name: typed value}} for `families`.
    `pairs` may also be {family: {name: value}} (values typed or strings)."""
    from ctxprobe.probes import FAMILIES

    if isinstance(pairs, Mapping):
        named = {f"{family}.{name}": value for family, values in pairs.items() for name, value in values.items()}
    else:
        named = parse_pairs(pairs)
    given: dict[str, dict] = {}
    for key, value in named.items():
        target, dot, name = key.rpartition(".")
        if dot and target not in families:
            raise UserError(f"--param {key}={value}: {target!r} is not among the --probe families "
                            f"({', '.join(families)})")
        targets = [target] if dot else [f for f in families if f in FAMILIES and name in FAMILIES[f].params]
        if not targets:
            raise UserError(f"--param {key}={value}: no --probe family has a parameter {name!r} "
                            "(see `ctxprobe probes list`); write FAMILY.NAME=VALUE")
        for family in targets:
            given.setdefault(family, {})[name] = value
    out = {}
    for family, params in given.items():
        fam = FAMILIES[family]
        try:
            typed = fam.check_params(params)
        except ValueError as e:
            raise UserError(f"--param: {e}") from None
        kept = {k: typed[k] for k in params if typed[k] != fam.params[k]}
        if kept:
            out[family] = kept
    return out
