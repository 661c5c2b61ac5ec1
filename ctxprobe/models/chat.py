"""Render a checkpoint's own chat template (jinja2 source; loader.read_template reads it).

The environment mirrors what HF templates expect: `raise_exception`, `strftime_now`, the
`tojson` filter, `bos_token`/`eos_token`, loop controls, and trimmed blocks.
"""

from __future__ import annotations

import json
from datetime import datetime

from ctxprobe.errors import UserError


def _raise(message):
    raise UserError(f"chat template: {message}")


def render_chat(template: str | None, messages: list[dict], *, add_generation_prompt: bool = True,
                special_tokens: dict | None = None, where: str = "this model", **extra) -> str:
    if not template:
        raise UserError(f"{where}: the checkpoint has no chat_template in tokenizer_config.json; "
                        "probe it as a base model (no chat template)")
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        compiled = env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise UserError(f"{where}: chat template does not parse (line {e.lineno}: {e.message})") from None
    return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                           **(special_tokens or {}), **extra)
