"""probes/exactness.py: the cheaper checks (pairs, sampled) agree with re-tokenizing the whole
prompt, over lengths, depths, seeds, samples, haystacks and three kinds of tokenizer trained
here in milliseconds (byte-level BPE, a SentencePiece-style unigram, a WordPiece); and they
catch a planted mismatch: a merge that joins two haystack units where they meet."""

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxprobe.probes import exactness, load_tokenizer, make_probe
from ctxprobe.probes.assemble import assemble
from ctxprobe.probes.haystacks import NOISE, load_haystack
from ctxprobe.probes.prose import sentences

FAMILIES = ["niah", "multikey", "multivalue", "multiquery", "kv", "vartrack", "cwe"]
CHEAP = ("pairs", "sampled")


def _corpus() -> list[str]:
    text = sentences(random.Random(7), 1500) + NOISE * 20 + [" 0123456789 VAR = {}\":, -abcdef"] * 20
    return ["".join(text[i:i + 40]) + "\n\n" for i in range(0, len(text), 40)]


def _train(kind: str):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if kind == "byte-level-bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=256 + 400, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif kind == "sentencepiece-unigram":   # "▁" for spaces, a unigram model, as SentencePiece
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
        tok.decoder = decoders.Metaspace(prepend_scheme="first", split=True)
        trainer = trainers.UnigramTrainer(vocab_size=700, show_progress=False,
                                          special_tokens=["<unk>"], unk_token="<unk>")
    else:                                    # BERT's: lower-cased, split at spaces and punctuation
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=600, show_progress=False, special_tokens=["[UNK]"])
    tok.train_from_iterator(_corpus(), trainer)
    return tok


@pytest.fixture(scope="module", params=["byte-level-bpe", "sentencepiece-unigram", "wordpiece"])
def tok(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "tokenizer.json"
    _train(request.param).save(str(path))
    return load_tokenizer(path)


def _build(tok, mode, **cell):
    try:
        return make_probe(tokenizer=tok, verify=mode, **cell)
    except ValueError:   # no exact prompt at this cell (e.g. kv's closer under WordPiece)
        return None


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(length=st.integers(700, 6000), depth=st.floats(0, 100), seed=st.integers(0, 3),
       sample=st.integers(0, 2), family=st.sampled_from(FAMILIES),
       haystack=st.sampled_from([None, "noise"]))
def test_cheaper_checks_agree_with_full_retokenization(tok, length, depth, seed, sample, family,
                                                       haystack):
    cell = dict(family=family, length=length, depth=depth, seed=seed, sample=sample, haystack=haystack)
    full = _build(tok, "full", **cell)
    for mode in CHEAP:
        exactness._memos.clear()   # check the pairs themselves, not what an earlier case proved
        cheap = _build(tok, mode, **cell)
        assert (cheap is None) == (full is None), mode
        if cheap is not None:
            assert cheap.verified == mode and full.verified == "full"
            assert cheap.token_ids == full.token_ids and cheap.hash == full.hash
            assert tok.encode(cheap.prompt) == cheap.token_ids


@pytest.mark.parametrize("haystack", [None, "noise"])
def test_long_prompts_use_windows_and_agree(tok, haystack):
    """Above 4 windows' length the sampled check reads windows, not the whole prompt."""
    for length, depth in [(9000, 0), (12345, 63), (20000, 100)]:
        cheap = make_probe("multikey", length, depth, tokenizer=tok, haystack=haystack)
        assert cheap.verified == exactness.DEFAULT_MODE == "sampled"
        assert tok.encode(cheap.prompt) == cheap.token_ids
        assert cheap.token_ids == make_probe("multikey", length, depth, tokenizer=tok,
                                             haystack=haystack, verify="full").token_ids


def test_windows_cover_whole_pieces(tok):
    """Each window is whole pieces: its text re-tokenizes to exactly its slice of the ids."""
    p = make_probe("multiquery", 15000, 40, tokenizer=tok, verify="junctions")
    asm = p._asm
    for start in (0, 1, 777, 5000, 14000, 15000 - exactness.WINDOW_TOKENS):
        text, a, b = exactness._window(asm, start, exactness.WINDOW_TOKENS)
        assert a <= start and b - a >= min(exactness.WINDOW_TOKENS, 15000 - a) and b <= 15000
        assert asm.text.find(text) >= 0
        ids = tok.encode(text) if a == 0 else tok.encode_units([text])[0]
        assert ids == p.token_ids[a:b]


def test_remembered_pairs_give_the_same_verdict(tok):
    exactness._memos.clear()
    first = make_probe("niah", 5000, 30, tokenizer=tok, sample=1, verify="pairs")
    pool = first._asm.pool
    proven = len(exactness._memos[pool].keys)
    assert proven > 0
    again = make_probe("niah", 5000, 70, tokenizer=tok, sample=1, verify="pairs")
    # Moving the needle joins the two units it separated: one pair new at most.
    assert proven <= len(exactness._memos[pool].keys) <= proven + 1
    assert tok.encode(again.prompt) == again.token_ids
    exactness._memos.clear()
    assert make_probe("niah", 5000, 70, tokenizer=tok, sample=1, verify="pairs").hash == again.hash


def test_bytes_and_modes():
    byte = load_tokenizer(None)
    for mode in exactness.MODES:
        p = make_probe("niah", 20000, 50, verify=mode)
        assert p.verified == mode and byte.encode(p.prompt) == p.token_ids
    assert make_probe("niah", 2000, 50, verify=True).verified == "full"
    assert make_probe("niah", 2000, 50, verify=False).verified == "junctions"
    with pytest.raises(ValueError, match="unknown verify mode 'fast'.*full, pairs, sampled, junctions"):
        make_probe("niah", 2000, 50, verify="fast")


# -- a planted mismatch ------------------------------------------------------------------------

WOW_TEXT = " ".join((["Alpha beta gamma.", "Delta epsilon zeta."] * 10 + ["Wow!"]) * 30)


@pytest.fixture(scope="module")
def wordless_bpe(tmp_path_factory):
    """A byte-level BPE applied to the whole text (no regex split), as trained with one; and the
    same with one merge planted first: "!" + " " -> "!Ġ", so the unit " Wow!" followed by any
    unit (which starts with a space) re-tokenizes differently than the two units alone."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + 400, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus() + [" Wow!"] * 50, trainer)
    raw = json.loads(tok.to_str())
    raw["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                            "use_regex": False}
    root = tmp_path_factory.mktemp("wordless")
    out = {}
    for name, merge in (("plain", None), ("planted", ("!", "Ġ"))):
        if merge is not None:
            vocab, merges = raw["model"]["vocab"], raw["model"]["merges"]
            vocab["".join(merge)] = len(vocab)
            merges.insert(0, list(merge) if isinstance(merges[0], list) else " ".join(merge))
        (root / name).mkdir()
        (root / name / "tokenizer.json").write_text(json.dumps(raw))
        out[name] = load_tokenizer(root / name)
    (root / "wow.txt").write_text(WOW_TEXT)
    out["haystack"] = str(root / "wow.txt")
    return out


def test_planted_merge_is_caught_by_pairs(wordless_bpe):
    plain, planted, hay = wordless_bpe["plain"], wordless_bpe["planted"], wordless_bpe["haystack"]
    assert planted.encode(" Wow! Alpha") != planted.encode(" Wow!") + planted.encode(" Alpha")
    # The merge ends at the space, so the vocabulary guard does not see it: pairs must.
    assert exactness.tokens_stop_at_spaces(planted) and exactness.tokens_stop_at_spaces(plain)
    for depth in (10, 50, 90):
        for mode in exactness.MODES:             # control: the same tokenizer without the merge
            p = make_probe("niah", 3000, depth, tokenizer=plain, haystack=hay, verify=mode)
            assert p.verified == mode and plain.encode(p.prompt) == p.token_ids
        bad = make_probe("niah", 3000, depth, tokenizer=planted, haystack=hay, verify="junctions")
        assert planted.encode(bad.prompt) != bad.token_ids      # junctions alone let it through
        for mode in ("pairs", "sampled", None):
            exactness._memos.clear()
            with pytest.raises(ValueError, match="haystack units merge where ' Wow!' meets"):
                make_probe("niah", 3000, depth, tokenizer=planted, haystack=hay, verify=mode)


@settings(max_examples=30, deadline=None)
@given(length=st.integers(300, 4000), depth=st.floats(0, 1), seed=st.integers(0, 5),
       sample=st.integers(0, 3), planted_tokenizer=st.booleans())
def test_pairs_agree_with_full_on_planted_mismatches(wordless_bpe, length, depth, seed, sample,
                                                      planted_tokenizer):
    """Assemblies checked only at their junctions, then judged by pairs and by the whole prompt:
    the verdicts agree, mismatch or not."""
    tok = wordless_bpe["planted" if planted_tokenizer else "plain"]
    hay = load_haystack(wordless_bpe["haystack"], seed, tok)
    try:
        asm = assemble(tok, length, hay, seed, sample, "Find the needle.\n\n", "\n\nWhat is it?",
                       [(" The special magic number for quiet-heron is 7302581.", depth)],
                       verify="junctions")
    except ValueError:
        return                                   # every candidate fails at a junction already
    exactness._memos.clear()
    whole_ok = exactness.full(tok, asm) is None
    assert (exactness.unit_pairs(tok, asm) is None) == whole_ok
    assert (exactness.check(tok, asm, "sampled") is None) == whole_ok
    assert whole_ok or planted_tokenizer


def test_a_vocabulary_that_spans_spaces_gets_the_full_check(tmp_path):
    """Trained without a pre-tokenizer, BPE learns tokens across words (" is green"): pairs
    would not be a proof, so the default check re-tokenizes the whole prompt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + 300, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    spans = load_tokenizer(tmp_path)
    assert not exactness.tokens_stop_at_spaces(spans)
    p = _build(spans, None, family="niah", length=3000, depth=50, haystack="noise")
    assert p is None or (p.verified == "full" and spans.encode(p.prompt) == p.token_ids)
