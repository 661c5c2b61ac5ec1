"""Property tests over lengths, depths, seeds and samples with the byte tokenizer."""

from hypothesis import given, settings
from hypothesis import strategies as st

from ctxprobe.probes import FAMILIES, load_tokenizer, make_probe

TOK = load_tokenizer(None)


@settings(max_examples=25, deadline=None)
@given(length=st.integers(1200, 20000), depth=st.floats(0, 100), seed=st.integers(0, 5),
       sample=st.integers(0, 3), family=st.sampled_from(list(FAMILIES)))
def test_exact_and_consistent(length, depth, seed, sample, family):
    p = make_probe(family, length, depth, seed=seed, sample=sample, tokenizer=TOK)
    assert len(p.token_ids) == length and TOK.encode(p.prompt) == p.token_ids
    assert p.token_ids == p.context_ids + p.question_ids
    for (s, e), (cs, ce) in zip(p.needle_spans, p.needle_char_spans):
        assert TOK.decode(p.token_ids[s:e]) == p.prompt[cs:ce]
    if p.actual_depth is not None:
        # Within one unit (a sentence, a JSON pair) of the request.
        hay = len(p.context_ids) - len(TOK.encode(p.instruction)) - sum(e - s for s, e in p.needle_spans)
        assert abs(p.actual_depth - depth) / 100 * hay <= 160


@settings(max_examples=15, deadline=None)
@given(length=st.integers(1200, 8000), depth=st.sampled_from([0, 25, 50, 100]),
       seed=st.integers(0, 5))
def test_same_inputs_same_probe(length, depth, seed):
    a = make_probe("multiquery", length, depth, seed=seed, tokenizer=TOK)
    b = make_probe("multiquery", length, depth, seed=seed, tokenizer=TOK)
    assert a.hash == b.hash and a.token_ids == b.token_ids
