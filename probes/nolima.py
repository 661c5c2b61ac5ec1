"""nolima: a question that shares no content word with its needle (after NoLiMa, ICML 2025).

The needle states a fact about a character through an entity ("Ines has lived next to the
Semper Opera House for years."); the question reaches it only through a latent association
("Which character has been to Dresden?"); the answer is the character's name. At generation,
code checks that the question and the needle share no content word (lower-cased, stemmed, stop
words removed) and keeps every sentence that holds the answer's name or a word of the
association chain out of the haystack. The overlap is stored with the probe (`meta`).

nolima-literal (or nolima with literal=1) asks the same needle (same character, entity,
haystack) with the entity named: the literal control, run on the same grid as nolima.

Knobs: hops (1: entity -> target; 2: entity -> city -> country), order (direct: the character
first; inverted: the entity first; any), names (a pool of the data file, or "Ada,Bo,Cy,Di"),
near_misses and placement (distractors: lures that name the question's target about another
character, and the same kind of entity said of another character, alternately).
"""

from __future__ import annotations

import random

from . import distractors as D
from . import lexical
from .associations import ORDERS, fill, load, name_pool
from .haystacks import FilteredHaystack, derive_seed, load_haystack
from .parts import Parts

INSTRUCTION = ("Read the following text carefully. A question about one of its characters comes "
               "after it; the answer may take a short inference from what the text states.\n\n")
ANSWER_PREFIX = "\nAnswer:"


def nolima(ctx, depth, hops=1, order="any", names="mixed", near_misses=0, placement="spread",
           literal=False):
    return build(ctx, depth, hops, order, names, near_misses, placement, literal=literal)


def nolima_literal(ctx, depth, hops=1, order="any", names="mixed", near_misses=0, placement="spread"):
    return build(ctx, depth, hops, order, names, near_misses, placement, literal=True)


def _check(hops, order):
    if hops not in (1, 2):
        raise ValueError(f"hops={hops} is not supported; use 1 or 2")
    if order not in ORDERS + ("any",):
        raise ValueError(f"order={order!r} is not known; choose one of: {', '.join(ORDERS + ('any',))}")


def choose(rng: random.Random, hops: int, order: str, pool: tuple[str, ...]):
    """(item, needle template, question index, character): a chain and templates whose needle
    and latent question share no content word, drawn in one seeded order."""
    data = load()
    item = rng.choice(data.items[hops])
    cat = data.categories[item.category]
    o = rng.choice(ORDERS) if order == "any" else order
    name = rng.choice(pool)
    pairs = [(t, q) for t in cat.needles[o] for q in range(len(cat.questions))
             if not lexical.overlap(fill(t, name=name, entity=item.entity),
                                    fill(cat.questions[q], target=item.target))]
    if not pairs:
        raise ValueError(f"associations data: every {o} template of {item.entity!r} shares a content "
                         f"word with its question about {item.target!r}; fix the data file")
    template, q = rng.choice(pairs)
    return item, o, template, q, name


def build(ctx, depth, hops, order, names, near_misses, placement, *, literal: bool) -> Parts:
    _check(hops, order)
    D.check(near_misses, placement)
    pool = name_pool(names)
    # Seeded without `literal` or the distractor knobs: the literal control and the variants
    # with near misses ask about the same needle.
    rng = random.Random(derive_seed("nolima", hops, order, names, ctx.seed, ctx.sample))
    item, o, template, q, name = choose(rng, hops, order, pool)
    cat = load().categories[item.category]
    needle = " " + fill(template, name=name, entity=item.entity)
    latent = fill(cat.questions[q], target=item.target)
    asked = fill(cat.literal_questions[q], entity=item.entity) if literal else latent
    shared = lexical.overlap(needle, asked)
    if not literal and shared:   # choose() guarantees it; a changed stemmer must not slip by
        raise AssertionError(f"nolima question {asked!r} shares {shared} with its needle")
    misses, roles = _near_misses(ctx, item, template, name, pool, depth, near_misses, placement)
    keep_out = item.key_stems | lexical.content_stems(name)
    haystack = FilteredHaystack(load_haystack(ctx.haystack, ctx.seed, ctx.tokenizer), keep_out,
                                {name.lower()})
    meta = {"association": {"category": item.category, "hops": item.hops, "chain": item.chain},
            "character": name, "order": o, "question_names": item.entity if literal else item.target,
            "overlap": {"count": len(shared), "stems": shared},
            "kept_out_of_haystack": sorted(keep_out | {name.lower()})}
    return Parts(INSTRUCTION, f"\n\nQuestion: {asked} Answer with the character's name only.",
                 ANSWER_PREFIX, [(needle, depth)] + misses, [name], " " + name,
                 haystack=haystack, meta=meta, roles=["needle"] + roles)


def _near_misses(ctx, item, template, name, pool, depth, n, placement):
    """n distractors and their roles: lures (another character, the question's target named,
    the question not answered) and similar entities (the needle's template, another character,
    an entity of the same kind whose chain shares no place with the asked one), alternately."""
    if not n:
        return [], []
    rng = random.Random(derive_seed("nolima-near", item.entity, name, n, placement, ctx.seed, ctx.sample))
    others = [x for x in pool if x != name]
    if n > len(others):
        raise ValueError(f"near_misses={n} needs {n} other characters; the name pool has {len(others)}")
    people = rng.sample(others, n)
    data = load()
    cat = data.categories[item.category]
    places = set(item.chain[1:])
    similar = [x for x in data.items[item.hops]
               if x.category == item.category and not places & set(x.chain[1:])]
    needles, roles = [], []
    for i, (person, frac) in enumerate(zip(people, D.depths(rng, n, depth, placement))):
        if i % 2 == 0:
            text, role = fill(rng.choice(cat.lures), name=person, target=item.target), "lure"
        else:
            text, role = fill(template, name=person, entity=rng.choice(similar).entity), "similar-entity"
        needles.append((" " + text, frac))
        roles.append(role)
    return needles, roles
