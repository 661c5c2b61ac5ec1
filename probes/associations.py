"""The association chains behind the nolima family (data/associations.json), read once.

An item links an entity to a target by common knowledge: one hop ("the Semper Opera House" ->
Dresden), or two (-> Dresden -> Germany, where the city is `via`). Its category gives the
needle templates (direct: the character first; inverted: the entity first), the questions
that name only the target, the literal questions that name the entity, and the lures (a
sentence that names the target about another character without answering the question).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from . import lexical

ORDERS = ("direct", "inverted")


@dataclass(frozen=True)
class Item:
    category: str
    entity: str
    target: str
    via: str | None = None      # the middle of a two-hop chain

    @property
    def hops(self) -> int:
        return 1 if self.via is None else 2

    @property
    def chain(self) -> list[str]:
        return [self.entity] + ([self.via] if self.via else []) + [self.target]

    @property
    def key_stems(self) -> set[str]:
        """Content stems of every link of the chain: none may appear in the haystack."""
        return set().union(*(lexical.content_stems(x) for x in self.chain))


@dataclass(frozen=True)
class Category:
    name: str
    needles: dict[str, tuple[str, ...]]   # order -> templates with {name}, {entity} / {Entity}
    questions: tuple[str, ...]            # with {target}
    literal_questions: tuple[str, ...]    # with {entity}
    lures: tuple[str, ...]                # with {name}, {target}


@dataclass(frozen=True)
class Associations:
    categories: dict[str, Category]
    items: dict[int, tuple[Item, ...]]    # hops -> items
    names: dict[str, tuple[str, ...]]     # pool name -> character names


def fill(template: str, **slots) -> str:
    """A template with its slots; {Entity} is the entity with a capital first letter."""
    entity = slots.get("entity")
    if entity is not None:
        slots["Entity"] = entity[0].upper() + entity[1:]
    return template.format(**slots)


@lru_cache(maxsize=1)
def load() -> Associations:
    raw = json.loads(resources.files(__package__).joinpath("data/associations.json").read_text("utf-8"))
    categories = {
        name: Category(name, {o: tuple(c["needles"]["default" if o == "direct" else o]) for o in ORDERS},
                       tuple(c["questions"]), tuple(c["literal_questions"]), tuple(c["lures"]))
        for name, c in raw["categories"].items()}
    items = {1: tuple(Item(cat, e, t) for cat, rows in raw["one_hop"].items() for e, t in rows),
             2: tuple(Item(cat, e, t, v) for cat, rows in raw["two_hop"].items() for e, v, t in rows)}
    names = {k: tuple(v) for k, v in raw["names"].items()}
    return Associations(categories, items, names)


def name_pool(spec: str) -> tuple[str, ...]:
    """A named pool of the data file, or names given as "Ada,Bo,Cy" (at least 4)."""
    data = load()
    if spec in data.names:
        return data.names[spec]
    given = tuple(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    if "," not in spec or len(given) < 4:
        raise ValueError(f"names={spec!r}: name a pool ({', '.join(data.names)}) or give at least "
                         "4 comma-separated names, e.g. names=Ada,Bo,Cy,Di")
    bad = [n for n in given if not n.isalpha() or lexical.words(n) != [n.lower()]]
    if bad:
        raise ValueError(f"names: {bad[0]!r} is not a single word of letters; give names like Ada,Bo,Cy,Di")
    return given
