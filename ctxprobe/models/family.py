"""What ctxprobe knows about one model family, as one record (registry.py lists them).

A family file (llama.py, mixtral.py, ...) holds its block class, its `build`, its config reader
and its key map, and ends with `FAMILY = Family(...)`. Nothing else in models/ names a family:
config.py, keymap.py, loader.py, shape.py and inspect.py ask the record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    name: str                                       # ModelConfig.family, e.g. "mixtral"
    # HF architecture name (config.json "architectures") -> its key map (see keymap.py).
    architectures: Mapping[str, Mapping[str, str | None]]
    # (config.json's text settings, n_layers) -> the ModelConfig fields this family sets; the
    # settings raise a UserError naming a key the family needs that is absent (config.py).
    read_config: Callable[[Mapping, int], dict]
    build: Callable                                 # ModelConfig -> Model (on torch's current device)
    default_rope_theta: float = 10000.0             # when config.json gives none
    # Architectures whose config.json nests the text model's settings under "text_config".
    nested_text: frozenset[str] = field(default_factory=frozenset)
    # ModelConfig -> keys that depend on the config (e.g. layers stored past the last one, dropped),
    # matched before the architecture's key map.
    config_keys: Callable[[object], Mapping[str, str | None]] | None = None
