"""Content words and their overlap: what literal matching could use to find a needle.

A text's content words are its words, lower-cased, with stop words removed and each reduced to
a stem by a small deterministic suffix stripper (no downloads, same answer everywhere). The
stemmer over-merges rather than under-merges ("lives", "lived", "living" -> "liv";
"character", "characters" -> "charact"), which makes a zero-overlap check stricter, never
looser. Irregular forms ("ate" / "eaten") are not merged; the data avoid leaning on them.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)   # runs of letters (any script)

STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing down during each either ever every
few for from further had has have having he her here hers herself him himself his how i if in
into is it its itself just me more most my myself neither no nor not now of off on once one only
or other our ours ourselves out over own same she should so some such than that the their theirs
them themselves then there these they this those through to too under until up very was we were
what when where which while who whom whose why will with would you your yours yourself
yourselves s t d ll m o re ve y
""".split())

# (suffix, replacement) by step; in each step the first rule that leaves a stem of 3 or more
# letters applies.
_PLURAL = (("sses", "ss"), ("ies", "y"), ("'s", ""), ("s", ""))
_VERB = (("ingly", ""), ("edly", ""), ("ied", "y"), ("ing", ""), ("ed", ""))
_DERIVED = (("ational", "ate"), ("ization", "ize"), ("fulness", "ful"), ("ousness", "ous"),
            ("iveness", "ive"), ("ement", ""), ("ment", ""), ("ness", ""), ("able", ""),
            ("ible", ""), ("ally", ""), ("ful", ""), ("est", ""), ("er", ""), ("ly", ""))
_KEEP_S = ("ss", "us", "is")   # "glass", "bus", "this": a final s that is not a plural


def _strip(word: str, rules) -> str:
    for suffix, replacement in rules:
        if word.endswith(suffix) and len(word) - len(suffix) + len(replacement) >= 3:
            if suffix == "s" and word.endswith(_KEEP_S):
                return word
            return word[: len(word) - len(suffix)] + replacement
    return word


def stem(word: str) -> str:
    """A deterministic stem: plural, then verb ending, then derivational suffix, then a final e
    and a doubled final consonant ("travell" -> "travel")."""
    w = word.lower()
    w = _strip(_strip(_strip(w, _PLURAL), _VERB), _DERIVED)
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeiouy":
        w = w[:-1]
    return w


def words(text: str) -> list[str]:
    """The words of text, lower-cased, in order ("Xi'an" -> ["xi", "an"])."""
    return [w.lower() for w in _WORD.findall(text)]


def content_stems(text: str) -> set[str]:
    """Stems of the words of text that are not stop words."""
    return {stem(w) for w in words(text) if w not in STOP_WORDS and len(w) > 1}


def overlap(a: str, b: str) -> list[str]:
    """The content stems a and b share, sorted: empty means no literal path between them."""
    return sorted(content_stems(a) & content_stems(b))
