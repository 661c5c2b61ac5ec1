"""Coherent procedural prose: seeded scenes whose sentences follow one another.

The default haystack (prose.py) is independent sentences. Chroma's context-rot study found
that models retrieve better from a *shuffled* haystack than from a coherent one, so the
coherence of the haystack is a knob: `coherent` reads these scenes in order, `shuffled` reads
the very same sentences in a seeded random order. Each scene keeps its people, place and
object from its first sentence to its last (pronouns refer back, the object comes back), and
a scene often starts with the previous scene's companion.
"""

from __future__ import annotations

import random

from . import words as W

SHE = set("Anna Clara Elena Greta Irene Karin Maria Nora Paula Rosa Tessa Vera Yvonne".split())
PLACES = ("river garden village harbor forest bridge market island meadow library castle tower "
          "valley orchard cottage kitchen mill pond stable lighthouse fountain").split()
OBJECTS = ("lantern letter bottle basket candle mirror ribbon saddle anchor compass feather hammer "
           "helmet pillow shovel blanket bucket ladder").split()
WEATHER = ("rain", "wind", "storm", "evening", "snow", "fog")


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def scene(r: random.Random, hero: str, friend: str) -> list[str]:
    """Eight sentences about one visit of `hero` to a place, where `friend` waits."""
    he, him, his = ("she", "her", "her") if hero in SHE else ("he", "him", "his")
    place, other = r.sample(PLACES, 2)
    thing, adj, adj2 = r.choice(OBJECTS), r.choice(W.ADJECTIVES), r.choice(W.ADJECTIVES)
    near, time, later = r.choice(W.NOUNS), r.choice(W.TIMES), r.choice(W.TIMES)
    pick = r.choice
    return [" " + s for s in [
        pick([f"{_cap(time)}, {hero} set out for the {place}.",
              f"{hero} reached the {place} {time}.",
              f"{pick(W.CONNECTIVES)}, {hero} went back to the {place}."]),
        pick([f"{_cap(he)} carried {_a(adj + ' ' + thing)} that {friend} had lent {him} the week before.",
              f"In {his} hands {hero} held {_a(adj + ' ' + thing)}, wrapped against the cold."]),
        pick([f"At the {place}, {friend} was waiting beside the {near}.",
              f"{friend} was already there, sitting near the {near}."]),
        pick([f"{friend} asked whether the {thing} was still {adj2}.",
              f"{friend} wanted to know where {he} had found the {thing}."]),
        pick([f"{hero} said that it was, and showed {friend} the {thing}.",
              f"{hero} explained that the {thing} had come from the {other}."]),
        pick([f"Together they {pick(W.VERBS_PAST)} the {near} and then {pick(W.VERBS_INTRANSITIVE)} for a while.",
              f"For a long time they talked about the {near} and the {thing}."]),
        pick([f"When the {pick(WEATHER)} came, they moved on to the {other}.",
              f"Later the two of them walked {pick(W.ADVERBS)} to the {other}."]),
        pick([f"Before leaving, {hero} promised to bring the {thing} back {later}.",
              f"{hero} left the {thing} with {friend} and walked home {pick(W.ADVERBS)}."]),
    ]]


def sentences(rng: random.Random, n: int) -> list[str]:
    """At least n sentences of consecutive scenes (whole scenes), each starting with a space."""
    out, hero = [], rng.choice(W.NAMES)
    while len(out) < n:
        friend = rng.choice([x for x in W.NAMES if x != hero])
        out += scene(rng, hero, friend)
        hero = friend if rng.random() < 0.5 else rng.choice(W.NAMES)
    return out
