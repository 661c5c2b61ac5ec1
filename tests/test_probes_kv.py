"""The kv family: every key distinct at any length, the asked key exactly once, the object
valid JSON at every length, exact length kept, and the vectorised UUIDs against the uuid module."""

import json
import re
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_probes_bpe import bpe  # noqa: F401  (the session BPE fixture, both split patterns)

from ctxprobe.probes import kv_retrieval as kv_mod
from ctxprobe.probes import kv_pairs as P
from ctxprobe.probes import load_tokenizer, make_probe
from ctxprobe.probes.tokenizers import WrappedTokenizer

BYTES = load_tokenizer(None)
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


def json_object(p) -> tuple[list[tuple[str, str]], str]:
    """(pairs in order, object text): the text from the instruction's "{" to the closing "}"."""
    start = len(p.instruction) - 1
    end = p.prompt.index("\n}\n\nKey:", start) + 2
    text = p.prompt[start:end]
    pairs = []
    json.loads(text, object_pairs_hook=lambda kv: pairs.extend(kv) or dict(kv))
    return pairs, text


def check_kv(p, tok, length):
    assert len(p.token_ids) == length and tok.encode(p.prompt) == p.token_ids
    pairs, text = json_object(p)
    keys = [k for k, _ in pairs]
    assert len(set(keys)) == len(keys), "a key repeats"
    (asked,) = re.findall(f'Key: "({UUID})"', p.question)
    assert keys.count(asked) == 1 and dict(pairs)[asked] == p.answers[0]
    assert p.prompt.count(asked) == 2                     # in the object and in the question
    assert all(re.fullmatch(UUID, k) for k in keys[:-1])     # the closer's may be cut short
    assert p.question.startswith(f' "{keys[-1]}": "{pairs[-1][1]}"\n}}')
    s, e = p.needle_spans[0]
    assert tok.decode(p.token_ids[s:e]) == f' "{asked}": "{p.answers[0]}",'
    return pairs


# -- the vectorised UUIDs against their slow references ---------------------------------------

def test_uuid_rows_match_the_uuid_module():
    index = np.array([0, 1, 2, 12345, (1 << 60) - 1, (P.ASKED << 60) | 7, (P.FIT << 60) | 99],
                     dtype=np.uint64)
    hi, lo = P.uuid_words(5, "key", index)
    for h, l, row in zip(hi, lo, P.uuid_rows(5, "key", index)):
        ref = uuid.UUID(int=(int(h) << 64) | int(l))
        assert ref.version == 4 and ref.variant == uuid.RFC_4122
        assert row.tobytes().decode() == str(ref)
        # The same bits through the uuid module's own setter of version and variant.
        assert str(uuid.UUID(int=(int(h) << 64) | int(l), version=4)) == str(ref)


def test_mix62_is_a_bijection():
    keys = P.mix_keys(9, "key")
    x = np.random.default_rng(0).integers(0, 1 << 62, size=10_000, dtype=np.uint64)
    y = P.mix62(x, keys)
    assert (y <= np.uint64(P.M62)).all() and np.array_equal(P.unmix62(y, keys), x)
    dense = P.mix62(np.arange(1 << 16, dtype=np.uint64), keys)
    assert len(np.unique(dense)) == 1 << 16


def test_pair_rows_match_an_f_string():
    index = np.arange(40, 60, dtype=np.uint64)
    texts = P.pair_texts(P.pair_rows(2, index))
    for i, text in zip(index, texts):
        key, value = P.uuid_str(2, "key", int(i)), P.uuid_str(2, "value", int(i))
        assert text == f' "{key}": "{value}",' and len(text) == P.PAIR_CHARS


def test_byte_fast_path_matches_generic_tokenization():
    fast = kv_mod.PairPool(4, BYTES, 64)
    slow = kv_mod.PairPool(4, WrappedTokenizer(BYTES), 64)
    order = np.random.default_rng(1).permutation(3 * 64)
    for pool in (fast, slow):
        for b in range(3):
            pool.block_slots(b)
    assert fast.texts[order].tolist() == slow.texts[order].tolist()
    assert np.array_equal(fast.gather(order), slow.gather(order))
    assert np.array_equal(fast.lengths_of(order), slow.lengths_of(order))


# -- unique keys beyond one block --------------------------------------------------------------

def test_keys_unique_above_the_old_pool_size_bytes():
    """2.5M byte tokens: ~31K pairs, about twice the old 16,384-pair pool."""
    length = 2_500_000 + 17
    p = make_probe("kv", length, 63, seed=1)
    pairs = check_kv(p, BYTES, length)
    assert len(pairs) > 1.8 * kv_mod.BLOCK and p.verified == "sampled"


@pytest.mark.parametrize("block", [64, 100])
def test_keys_unique_across_many_blocks_bpe(bpe, monkeypatch, block):  # noqa: F811
    monkeypatch.setattr(kv_mod, "BLOCK", block)
    for length, depth in [(30_011, 10), (47_777, 95)]:
        pairs = check_kv(make_probe("kv", length, depth, seed=2, tokenizer=bpe), bpe, length)
        assert len(pairs) > 3 * block


def test_samples_share_pairs_but_not_order(monkeypatch):
    monkeypatch.setattr(kv_mod, "BLOCK", 32)
    a = check_kv(make_probe("kv", 9000, 50, seed=3, sample=0), BYTES, 9000)
    b = check_kv(make_probe("kv", 9000, 50, seed=3, sample=1), BYTES, 9000)
    assert [k for k, _ in a] != [k for k, _ in b]
    assert len({k for k, _ in a} & {k for k, _ in b}) > len(a) // 2


# -- valid JSON, exact length ------------------------------------------------------------------

@pytest.mark.parametrize("length", [450, 1000, 1537, 4099, 9999, 20_001])
@pytest.mark.parametrize("depth", [0, 37, 100])
def test_valid_json_at_every_length_bytes(length, depth):
    check_kv(make_probe("kv", length, depth, seed=4), BYTES, length)


def test_valid_json_at_every_length_bpe(bpe):  # noqa: F811
    for length in list(range(900, 960, 7)) + [2047, 5003, 12_345]:
        for depth in (0, 50, 100):
            check_kv(make_probe("kv", length, depth, seed=5, tokenizer=bpe), bpe, length)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(length=st.integers(600, 8000), depth=st.floats(0, 100), seed=st.integers(0, 3),
       sample=st.integers(0, 2), byte=st.booleans())
def test_property_valid_json(bpe, length, depth, seed, sample, byte):  # noqa: F811
    tok = BYTES if byte else bpe
    check_kv(make_probe("kv", length, depth, seed=seed, sample=sample, tokenizer=tok), tok, length)


def test_closer_absorbs_the_remainder():
    """Consecutive lengths differ only in the closer's value (the object's last pair)."""
    probes = [make_probe("kv", n, 20, seed=6) for n in range(3000, 3090)]
    last = [json_object(p)[0][-1] for p in probes]
    assert len({k for k, _ in last}) == 1 and re.fullmatch(UUID, last[0][0])
    assert len({v for _, v in last}) > 30
    head = [json_object(p)[0][:-1] for p in probes]
    assert all(h[:20] == head[0][:20] for h in head)


def test_tiny_prompts_close_with_a_short_key_bytes():
    check_tiny(BYTES)


def test_tiny_prompts_close_with_a_short_key_bpe(bpe):  # noqa: F811
    check_tiny(bpe)


def check_tiny(tok):
    """From the minimum length up, until a whole-key closer fits: the asked pair and a closer
    whose key is cut short to fit."""
    n = min(n for n in range(100, 600) if _builds(n, tok))
    closer_keys = []
    for length in range(n, n + 60):
        pairs = check_kv(make_probe("kv", length, 50, tokenizer=tok), tok, length)
        assert len(pairs) == 2
        closer_keys.append(pairs[-1][0])
    assert closer_keys[0] == "" and len(closer_keys[-1]) == 36


def test_minimum_length_is_named():
    n = min(n for n in range(100, 600) if _builds(n))
    with pytest.raises(ValueError, match=f"at least {n} tokens"):
        make_probe("kv", n - 1, 50)


def _builds(n, tok=BYTES):
    try:
        make_probe("kv", n, 50, tokenizer=tok)
        return True
    except ValueError:
        return False


# -- determinism -------------------------------------------------------------------------------

def test_deterministic_and_length_independent_stream(bpe):  # noqa: F811
    a = make_probe("kv", 6000, 80, seed=7, tokenizer=bpe)
    b = make_probe("kv", 6000, 80, seed=7, tokenizer=bpe)
    assert a.hash == b.hash and a.token_ids == b.token_ids
    longer = make_probe("kv", 9000, 80, seed=7, tokenizer=bpe)
    n = a.needle_spans[0][0] - 300
    assert longer.token_ids[:n] == a.token_ids[:n] and longer.answers == a.answers
    kv_mod._pool.cache_clear()                               # a fresh pool renders the same
    assert make_probe("kv", 6000, 80, seed=7, tokenizer=bpe).hash == a.hash
