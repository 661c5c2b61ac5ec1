"""Near-miss distractors on niah, multikey, nolima (and mrcr): counts, placements and kinds as
asked, positions recorded in the probe, earlier probes unchanged, and `probes show` marks them."""

import json
import re

import pytest

from ctxprobe.cli import main
from ctxprobe.probes import make_probe
from ctxprobe.probes.distractors import NEAR, PLACEMENTS

LENGTH = 16000
TOL = 2.5   # percent: needles sit at unit boundaries (an mrcr exchange is ~1.6% of 16K bytes)


def misses(p):
    """(role, depth, text) of each near miss (not multikey's RULER distractors)."""
    return [(r, d, p.prompt[s:e]) for r, d, (s, e) in
            zip(p.needle_roles, p.needle_depths, p.needle_char_spans) if r not in ("needle", "other-key")]


@pytest.mark.parametrize("family", ["niah", "multikey", "nolima", "mrcr"])
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_counts_and_placements_as_asked(family, placement):
    for n, depth in ((1, 30.0), (4, 60.0)):
        p = make_probe(family, LENGTH, depth, seed=4, sample=n, near_misses=n, placement=placement)
        got = misses(p)
        assert len(got) == n and len(p.distractor_spans) == n + 3 * (family == "multikey")
        asked = p.actual_depth
        assert abs(asked - depth) < TOL
        for _, d, _ in got:
            assert 0 <= d <= 100
            if placement == "before":
                assert d <= asked + TOL
            elif placement == "after":
                assert d >= asked - TOL
            elif placement == "near":
                assert abs(d - asked) <= 100 * NEAR + TOL
        record = p.to_json()
        assert record["needle_roles"] == p.needle_roles and len(record["needle_depths"]) == len(p.needle_spans)
        assert sorted(record["needle_spans"]) == sorted(list(s) for s in p.needle_spans)


def test_spread_really_spreads():
    p = make_probe("niah", LENGTH, 50, seed=1, near_misses=12, placement="spread")
    depths = [d for _, d, _ in misses(p)]
    assert min(depths) < 30 and max(depths) > 70


@pytest.mark.parametrize("family", ["niah", "multikey"])
def test_similar_keys_share_a_word_and_hold_other_values(family):
    for sample in range(5):
        p = make_probe(family, 6000, 50, seed=2, sample=sample, near_misses=5, value_kind="word")
        key = re.search(r"for (\S+) mentioned", p.question).group(1)
        for role, _, text in misses(p):
            other, value = re.search(r"for (\S+) is (\S+)\.", text).groups()
            assert role == "similar-key" and other != key
            assert len(set(other.split("-")) & set(key.split("-"))) == 1
            assert value != p.answers[0]
        assert p.prompt.count(f"for {key} is") == 1


def test_nolima_near_misses_lure_with_the_target_or_share_the_template():
    for sample in range(8):
        p = make_probe("nolima", 6000, 50, seed=5, sample=sample, near_misses=4, hops=1 + sample % 2)
        target, answer = p.meta["association"]["chain"][-1], p.answers[0]
        roles = [r for r, _, _ in misses(p)]
        assert roles == ["lure", "similar-entity", "lure", "similar-entity"]
        for role, _, text in misses(p):
            assert answer not in text
            if role == "lure":
                assert target in text          # a literal search for the question finds it
            else:
                assert target not in text and p.meta["association"]["chain"][0] not in text
        # Same needle and question with and without near misses.
        plain = make_probe("nolima", 6000, 50, seed=5, sample=sample, hops=1 + sample % 2)
        assert plain.question == p.question and plain.answers == p.answers


def test_mrcr_near_misses_are_similar_requests():
    p = make_probe("mrcr", 8000, 50, seed=3, near_misses=4)
    request = p.meta["request"]
    for role, _, text in misses(p):
        asked = text.strip().split("\n\nAssistant:")[0]
        assert asked != request and role in ("same-topic", "same-format")


def test_defaults_leave_earlier_probes_unchanged():
    # Hashes of the same probes made before the near-miss knobs existed (commit 04f642c).
    assert make_probe("niah", 3000, 40, seed=5, sample=1).hash == "b73d953e37852234"
    assert make_probe("multikey", 3000, 40, seed=5, sample=1).hash == "4a469123465678b2"
    assert make_probe("niah", 3000, 40, seed=5, sample=1, value_kind="word").hash == "2ab6823e74f39574"
    p = make_probe("niah", 3000, 40, seed=5, sample=1, near_misses=0, placement="spread")
    assert p.hash == "b73d953e37852234" and p.params == {"value_kind": "number"}
    assert make_probe("niah", 3000, 40, seed=5, sample=1, near_misses=1).hash != p.hash


@pytest.mark.parametrize("bad", [{"near_misses": -1}, {"near_misses": 21}, {"placement": "middle"}])
def test_bad_knobs_are_refused(bad):
    for family in ("niah", "multikey", "nolima", "mrcr"):
        with pytest.raises(ValueError):
            make_probe(family, 6000, 50, **bad)


def test_show_marks_needle_distractors_and_association(runner):
    result = runner.invoke(main, ["probes", "show", "nolima", "--length", "3000", "--param", "near_misses=2",
                                  "--param", "placement=near", "--window", "40"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.count(">>>") == 3 and out.count("(distractor: ") == 2
    assert "(distractor: lure)" in out and "(distractor: similar-entity)" in out
    p = make_probe("nolima", 3000, 50, near_misses=2, placement="near")
    chain = " -> ".join(p.meta["association"]["chain"])
    assert f"association ({p.meta['association']['category']}, 1 hop): {chain}" in out and "content words shared by question and needle: 0" in out
    assert "distractors (2): lure" in out
    exported = runner.invoke(main, ["probes", "export", "nolima-literal", "--lengths", "3000", "--depths", "50",
                                    "--param", "near_misses=2", "-o", "-"])
    record = json.loads(exported.stdout.splitlines()[0])
    assert record["needle_roles"] == ["needle", "lure", "similar-entity"]
    assert record["meta"]["overlap"]["count"] > 0 and record["meta"]["association"]["chain"]
