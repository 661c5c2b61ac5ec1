"""`run --param`: probe-family parameters for a sweep, parsed as `probes show/export --param` are.

`FAMILY.NAME=VALUE` sets one family's parameter; `NAME=VALUE` sets it for every family of the
sweep that has it. Values are checked and typed by the family (probes/families.py); a value equal
to the family's default is dropped, so spelling out a default does not make another run.
"""

from __future__ import annotations

from ctxprobe.errors import UserError


def family_params(pairs, families: list[str]) -> dict:
    """('multikey.value_kind=uuid', 'hops=6', ...) -> {family: {name: typed value}} for `families`."""
    from ctxprobe.commands.probes import _parse_params   # the NAME=VALUE parser of `probes show/export`
    from ctxprobe.probes import FAMILIES

    given: dict[str, dict] = {}
    for key, value in _parse_params(pairs).items():
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
