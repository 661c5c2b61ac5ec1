"""probes: what to ask. Exact-length, seeded long-context probes in any tokenizer's tokens.

    from . import load_tokenizer, make_probe, FAMILIES
    p = make_probe("niah", 4096, 50, seed=0, tokenizer=load_tokenizer(None))
    assert load_tokenizer(None).encode(p.prompt) == p.token_ids and len(p.token_ids) == 4096
"""

from .families import FAMILIES, Family
from .probe import Probe, make_probe
from .tokenizers import ByteTokenizer, HFTokenizer, load_tokenizer

__all__ = ["FAMILIES", "Family", "Probe", "make_probe", "load_tokenizer", "ByteTokenizer",
           "HFTokenizer"]
