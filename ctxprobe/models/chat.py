"""Render a checkpoint's own chat template (jinja2 source from tokenizer_config.json).

The environment mirrors what HF templates expect: `raise_exception`, `strftime_now`, the
`tojson` filter, `bos_token`/`eos_token`, loop controls, and trimmed blocks.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from ctxprobe.errors import UserError
from ctxprobe.models.loader import read_json_object


def read_template(root: Path) -> tuple[str | None, dict]:
    """-> (template source or None, {bos_token, eos_token, ...} strings) from a checkpoint dir."""
    cfg_file = root / "tokenizer_config.json"
    cfg = read_json_object(cfg_file) if cfg_file.exists() else {}
    template = cfg.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default") or next(iter(named.values()), None)
    jinja_file = root / "chat_template.jinja"
    if template is None and jinja_file.exists():
        template = jinja_file.read_text()
    tokens = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        tok = cfg.get(name)
        tok = tok.get("content") if isinstance(tok, dict) else tok
        if isinstance(tok, str):
            tokens[name] = tok
    return template, tokens


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
