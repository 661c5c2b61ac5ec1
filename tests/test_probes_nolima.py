"""nolima: the association data, the stemmer, zero content-word overlap between question and
needle over many seeds, the answer and the chain's words kept out of the haystack, the literal
control, the knobs, and exact lengths in a byte-level BPE."""

import random
import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from ctxprobe.probes import lexical, load_tokenizer, make_probe
from ctxprobe.probes.associations import ORDERS, fill, load, name_pool
from ctxprobe.probes.prose import sentences

ROOT = Path(__file__).resolve().parents[1]


def needle_text(p) -> str:
    [(s, e)] = [span for span, r in zip(p.needle_char_spans, p.needle_roles) if r == "needle"]
    return p.prompt[s:e]


def asked_sentence(p) -> str:
    """The question itself, without the fixed 'Question:' label and the answer instruction."""
    return re.search(r"Question: (.*?\?)", p.question).group(1)


def haystack_text(p) -> str:
    """The context with every needle and distractor cut out."""
    text, start = p.prompt, len(p.instruction)
    pieces, at = [], start
    for s, e in sorted(p.needle_char_spans):
        pieces.append(text[at:s])
        at = e
    pieces.append(text[at:start + len(p.context)])
    return "".join(pieces)


def test_data_file_is_large_enough_and_shipped():
    data = load()
    assert len(data.items[1]) >= 150 and len(data.items[2]) >= 50
    assert len({(i.entity, i.target) for i in data.items[1]}) == len(data.items[1])
    for cat in data.categories.values():
        assert all(len(cat.needles[o]) >= 3 for o in ORDERS)
        assert len(cat.questions) >= 2 and len(cat.literal_questions) == len(cat.questions)
        for t in cat.needles["direct"]:
            assert t.index("{name}") < t.lower().index("{entity}")
        for t in cat.needles["inverted"]:       # the character after the entity
            assert t.lower().index("{entity}") < t.index("{name}")
    assert resources.files("ctxprobe.probes").joinpath("data/associations.json").is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "data/*.json" in package_data["ctxprobe.probes"]


def test_every_item_has_a_zero_overlap_pair_in_each_order():
    data = load()
    for hops, items in data.items.items():
        for item in items:
            cat = data.categories[item.category]
            for order in ORDERS:
                pairs = [(t, q) for t in cat.needles[order] for q in cat.questions
                         if not lexical.overlap(fill(t, name="Ines", entity=item.entity),
                                                fill(q, target=item.target))]
                assert pairs, (item, order)
            assert not lexical.content_stems(item.target) & lexical.content_stems(item.entity), item


def test_stemmer_merges_forms_and_drops_stop_words():
    for forms in (["lives", "lived", "living", "live"], ["house", "houses"],
                  ["character", "characters"], ["travelled", "travel", "travelling"],
                  ["studies", "studied", "study"], ["cooked", "cooks", "cooking", "cook"]):
        assert len({lexical.stem(w) for w in forms}) == 1, forms
    assert lexical.stem("glass") == lexical.stem("glasses") != lexical.stem("glad")
    assert lexical.content_stems("Which character has been to the Semper Opera House?") == \
        {"charact", "semp", "opera", "hous"}
    assert lexical.overlap("Ines lives by the houses.", "Who lived in a house?") == ["hous", "liv"]
    assert lexical.words("Xi'an, Zürich; 3 cafés") == ["xi", "an", "zürich", "cafés"]


@pytest.mark.parametrize("hops", [1, 2])
def test_zero_content_word_overlap_over_many_seeds(hops):
    seen = set()
    for seed in range(150):     # the noise haystack: each seed's haystack costs nothing to make
        for order in ("direct", "inverted"):
            p = make_probe("nolima", 700, 50, seed=seed, sample=seed % 3, hops=hops, order=order,
                           haystack="noise")
            needle, question = needle_text(p), asked_sentence(p)
            assert lexical.overlap(needle, question) == [] == lexical.overlap(needle, p.question)
            assert p.meta["overlap"] == {"count": 0, "stems": []}
            assert p.meta["association"]["hops"] == hops == len(p.meta["association"]["chain"]) - 1
            assert p.meta["association"]["chain"][-1] in question
            assert p.answers == [p.meta["character"]] and p.meta["character"] in needle
            seen.add(p.meta["association"]["chain"][0])
    assert len(seen) > 40     # many different items are drawn


@pytest.mark.parametrize("haystack", [None, "coherent", "shuffled", "noise", "file"])
def test_answer_and_chain_words_are_absent_from_the_haystack(haystack, tmp_path):
    spec = haystack
    if haystack == "file":   # a user's text that mentions the chains' words often
        data = load()
        lines = [f"{i.entity} is near {i.target}. Many people like it." for i in data.items[1][:80]]
        lines += [f"{n} walked home alone. The evening was quiet." for n in data.names["mixed"]]
        lines += sentences(random.Random(0), 400)
        (tmp_path / "h.txt").write_text(" ".join(lines))
        spec = str(tmp_path / "h.txt")
    for sample in range(25):
        p = make_probe("nolima", 2500, 40, seed=7, sample=sample, haystack=spec,
                       hops=1 + sample % 2, near_misses=sample % 3)
        hay = haystack_text(p)
        chain_stems = set().union(*(lexical.content_stems(x) for x in p.meta["association"]["chain"]))
        assert not lexical.content_stems(hay) & chain_stems, (p.meta, hay[:200])
        assert p.answers[0].lower() not in lexical.words(hay)
        assert set(p.meta["kept_out_of_haystack"]) >= chain_stems


def test_literal_control_asks_the_same_needle_with_the_entity_named():
    for sample in range(20):
        latent = make_probe("nolima", 1500, 30, seed=3, sample=sample)
        literal = make_probe("nolima-literal", 1500, 30, seed=3, sample=sample)
        assert needle_text(latent) == needle_text(literal) and latent.answers == literal.answers
        entity = literal.meta["association"]["chain"][0]
        assert entity in literal.question and entity not in latent.question
        shared = lexical.overlap(needle_text(literal), asked_sentence(literal))
        assert shared and literal.meta["overlap"] == {"count": len(shared), "stems": shared}
        assert latent.hash != literal.hash
        by_param = make_probe("nolima", 1500, 30, seed=3, sample=sample, literal="1")
        assert by_param.question == literal.question and by_param.prompt == literal.prompt


def test_knobs_and_determinism():
    a = make_probe("nolima", 3000, 60, seed=11, hops=2, order="inverted", names="english")
    assert a.hash == make_probe("nolima", 3000, 60, seed=11, hops=2, order="inverted", names="english").hash
    assert a.hash != make_probe("nolima", 3000, 60, seed=12, hops=2, order="inverted", names="english").hash
    needle = needle_text(a)
    entity, city, country = a.meta["association"]["chain"]
    assert needle.index(entity[1:]) < needle.index(a.answers[0]) and a.meta["order"] == "inverted"
    assert a.answers[0] in name_pool("english") and country in a.question and city not in a.question
    custom = make_probe("nolima", 3000, 60, seed=11, names="Ada,Bo,Cy,Di", order="direct")
    assert custom.answers[0] in {"Ada", "Bo", "Cy", "Di"}
    assert needle_text(custom).startswith(" " + custom.answers[0])
    for bad in ({"hops": 3}, {"order": "sideways"}, {"names": "nobody"}, {"names": "Ada,Bo"},
                {"near_misses": 21}, {"placement": "middle"}):
        with pytest.raises(ValueError):
            make_probe("nolima", 3000, 60, **bad)


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    llama3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
              r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(llama3), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + 600, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = sentences(random.Random(3), 2000)
    tok.train_from_iterator(["".join(text[i:i + 40]) + "\n\n" for i in range(0, len(text), 40)], trainer)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tok.save(str(path))
    return load_tokenizer(path)


@pytest.mark.parametrize("family", ["nolima", "nolima-literal"])
def test_exact_length_in_a_bpe(bpe, family):
    for length in (1024, 3000, 16384, 65536):
        for seed in range(2):
            p = make_probe(family, length, 35, seed=seed, tokenizer=bpe, near_misses=seed * 2,
                           hops=1 + seed, verify="full")
            assert len(p.token_ids) == length and bpe.encode(p.prompt) == p.token_ids
            assert p.verified == "full"
