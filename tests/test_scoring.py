"""Strict and lenient scoring of free-form responses against gold answers."""

import pytest

from ctxprobe.scoring import lenient_score, strict_score


@pytest.mark.parametrize("response", [" 1234567", "1234567.", "1234567\n", " 1234567 ", "\"1234567\""])
def test_strict_passes_the_bare_answer_with_trailing_punctuation(response):
    assert strict_score(response, ["1234567"]) == 1.0


@pytest.mark.parametrize("response", ["The number is 1234567.", "12345678", "1234567 and more", ""])
def test_strict_fails_anything_else(response):
    assert strict_score(response, ["1234567"]) == 0.0


def test_strict_accepts_a_restated_answer_prefix():
    assert strict_score("Answer: 1234567.", ["1234567"], answer_prefix="Answer:") == 1.0
    assert strict_score("Answer: 7654321", ["1234567"], answer_prefix="Answer:") == 0.0


def test_strict_needs_every_answer_in_order():
    gold = ["apple", "pear", "New York"]
    for ok in ["apple, pear, New York", "apple pear New York.", "apple, pear and New York", "apple\npear\nNew York"]:
        assert strict_score(ok, gold) == 1.0, ok
    for bad in ["pear, apple, New York", "apple, pear", "apple, pear, New York, fig"]:
        assert strict_score(bad, gold) == 0.0, bad


def test_lenient_is_the_fraction_found_anywhere():
    assert lenient_score("The number is 1234567.", ["1234567"]) == 1.0
    assert lenient_score("I found APPLE and fig", ["apple", "pear"]) == 0.5
    assert lenient_score("nothing", ["apple", "pear"]) == 0.0


def test_lenient_never_exceeds_strict_from_below():
    # Whatever passes strict is found by lenient too.
    for response in ["1234567", "1234567.", " 1234567\n"]:
        assert strict_score(response, ["1234567"]) <= lenient_score(response, ["1234567"])


def test_no_gold_answer_is_a_value_error():
    with pytest.raises(ValueError):
        strict_score("x", [])
    with pytest.raises(ValueError):
        lenient_score("x", [])
