"""probes/ with the built-in byte tokenizer: exact length, needle spans, depth, determinism,
haystack kinds and bad input."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ctxprobe.probes import FAMILIES, load_tokenizer, make_probe
from ctxprobe.probes.haystacks import NOISE, split_sentences

TOK = load_tokenizer(None)
LENGTHS = [1000, 1537, 4096, 9999]


def check_probe(p, tok, length):
    """Every invariant of the Probe contract that holds for any family and tokenizer."""
    assert len(p.token_ids) == length == p.length
    assert tok.encode(p.prompt) == p.token_ids
    assert p.prompt == p.instruction + p.context + p.question + p.answer_prefix
    assert p.token_ids == p.context_ids + p.question_ids
    assert tok.encode(p.question + p.answer_prefix) == p.question_ids
    for (s, e), (cs, ce) in zip(p.needle_spans, p.needle_char_spans):
        assert 0 <= s < e <= len(p.context_ids)
        assert tok.decode(p.token_ids[s:e]) == p.prompt[cs:ce]
        assert tok.encode(p.prompt[cs:ce]) == p.token_ids[s:e]
        if p.family not in ("nolima", "nolima-literal", "mrcr"):   # their needles are sentences, exchanges
            assert p.prompt[cs:ce].startswith((" The special magic", ' "', " VAR "))
    assert p.answers and all(a in p.answer_text for a in p.answers)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("length", LENGTHS)
def test_exact_length_every_family(family, length):
    p = make_probe(family, length, 50, seed=3, tokenizer=TOK)
    check_probe(p, TOK, length)


@pytest.mark.parametrize("family", ["niah", "multikey", "multivalue", "multiquery", "kv", "vartrack"])
def test_needles_hold_their_answers(family):
    p = make_probe(family, 3000, 30, seed=1, tokenizer=TOK)
    needles = [p.prompt[a:b] for a, b in p.needle_char_spans]
    for answer in p.answers:
        assert any(answer in n for n in needles), (answer, needles)
    if family != "kv":
        assert all(p.prompt.count(a) >= 1 for a in p.answers)


def test_the_asked_key_has_one_needle():
    p = make_probe("multikey", 3000, 30, seed=1, tokenizer=TOK)
    target = p.prompt[slice(*p.needle_char_spans[0])]
    key = target.split(" for ")[1].split(" is ")[0]
    assert p.prompt.count(f"for {key} is") == 1 and key in p.question
    assert len(p.needle_spans) == 4


@pytest.mark.parametrize("depth", [0, 10, 33.3, 50, 75, 100])
def test_actual_depth_within_one_sentence(depth):
    p = make_probe("niah", 5000, depth, seed=2, tokenizer=TOK)
    start = p.needle_spans[0][0]
    hay_start = len(TOK.encode(p.instruction))
    hay_tokens = len(p.context_ids) - hay_start - (p.needle_spans[0][1] - start)
    before = start - hay_start
    assert p.actual_depth == pytest.approx(100 * before / hay_tokens, abs=1e-3)
    longest = max(len(TOK.encode(s)) for s in p.context.split(".")) + 2
    assert abs(before - depth / 100 * hay_tokens) <= longest


def test_depth_0_and_100_are_the_ends():
    first = make_probe("niah", 3000, 0, tokenizer=TOK)
    last = make_probe("niah", 3000, 100, tokenizer=TOK)
    assert first.actual_depth == 0 and first.context.startswith(" The special magic")
    assert last.actual_depth > 97


def test_vartrack_chain_in_order():
    p = make_probe("vartrack", 4000, 20, hops=3, chains=2, tokenizer=TOK)
    starts = [p.prompt.index(f"VAR {v} =") for v in p.answers]
    assert starts == sorted(starts) and len(p.answers) == 4
    assert p.answer_text == " " + " ".join(p.answers)


def test_multivalue_answers_in_text_order():
    p = make_probe("multivalue", 4000, 70, values=5, tokenizer=TOK)
    positions = [p.prompt.index(v) for v in p.answers]
    assert positions == sorted(positions) and len(set(p.answers)) == 5


@pytest.mark.parametrize("length", [2000, 6000, 30000])
def test_cwe_common_words_are_the_most_frequent(length):
    p = make_probe("cwe", length, 0, common=5, tokenizer=TOK)
    counts = Counter(p.context.split())
    least_common = min(counts[w] for w in p.answers)
    most_other = max(c for w, c in counts.items() if w not in p.answers)
    assert least_common > most_other
    assert p.actual_depth is None and p.needle_spans == []


@pytest.mark.parametrize("kind", ["number", "word", "uuid"])
def test_value_kinds(kind):
    p = make_probe("niah", 2000, 50, value_kind=kind, tokenizer=TOK)
    (value,) = p.answers
    assert {"number": value.isdigit() and len(value) == 7, "word": value.isalpha(),
            "uuid": len(value) == 36 and value.count("-") == 4}[kind]


def test_same_sample_shares_context_prefix_across_lengths():
    a = make_probe("niah", 4000, 80, seed=5, tokenizer=TOK)
    b = make_probe("niah", 8000, 80, seed=5, tokenizer=TOK)
    n = a.needle_spans[0][0] - 200
    assert a.token_ids[:n] == b.token_ids[:n] and a.answers == b.answers
    c = make_probe("niah", 4000, 80, seed=5, sample=1, tokenizer=TOK)
    assert c.token_ids[:n] != a.token_ids[:n]


def test_seeds_and_samples_differ_and_repeat():
    a, b = make_probe("kv", 3000, 50, seed=1), make_probe("kv", 3000, 50, seed=1)
    assert a.hash == b.hash and a.prompt == b.prompt
    assert make_probe("kv", 3000, 50, seed=2).hash != a.hash
    assert make_probe("kv", 3000, 50, seed=1, sample=1).hash != a.hash
    assert make_probe("kv", 3000, 51, seed=1).hash != a.hash


_SNIPPET = """
import json, sys
from ctxprobe.probes import make_probe
out = {f: make_probe(f, 2500, 40, seed=11, sample=2).hash for f in sys.argv[1:]}
print(json.dumps(out))
"""


def test_determinism_across_processes():
    families = list(FAMILIES)
    runs = [subprocess.run([sys.executable, "-c", _SNIPPET, *families], capture_output=True,
                           text=True, check=True, cwd=Path(__file__).parents[1],
                           env={"PYTHONHASHSEED": str(seed), "PATH": ""})
            for seed in (1, 2)]
    first, second = (json.loads(r.stdout) for r in runs)
    assert first == second
    assert first == {f: make_probe(f, 2500, 40, seed=11, sample=2).hash for f in families}


def test_noise_haystack_repeats_one_group():
    p = make_probe("niah", 3000, 50, haystack="noise", tokenizer=TOK)
    check_probe(p, TOK, 3000)
    assert p.context.count(NOISE[1].strip()) > 20 and p.haystack == "noise"


def test_file_and_directory_haystacks(tmp_path):
    (tmp_path / "a.txt").write_text("Alpha beta gamma. Delta epsilon!\n\nZeta eta theta? " * 3)
    (tmp_path / "b.txt").write_text("Iota kappa lambda mu.")
    for spec in (tmp_path / "a.txt", tmp_path):
        p = make_probe("niah", 2000, 50, haystack=str(spec), tokenizer=TOK)
        check_probe(p, TOK, 2000)
        assert "Delta epsilon!" in p.context and p.haystack == str(spec)
    assert "Iota kappa" in make_probe("niah", 2000, 50, haystack=str(tmp_path)).context


def test_utf8_haystack_with_byte_tokenizer(tmp_path):
    (tmp_path / "zh.txt").write_text("你好世界。今天天气很好。" * 40, encoding="utf-8")
    for length in range(900, 912):
        check_probe(make_probe("niah", length, 50, haystack=str(tmp_path), tokenizer=TOK), TOK, length)


def test_split_sentences():
    assert split_sentences("One.  Two!\nThree? 四。五") == [" One.", " Two!", " Three?", " 四。", " 五"]
    assert all(len(u) <= 2001 for u in split_sentences("word " * 3000))


def test_to_json_record():
    p = make_probe("multiquery", 2048, 25, seed=4, sample=1, tokenizer=TOK)
    rec = json.loads(json.dumps(p.to_json()))
    for key in ["family", "length", "prompt_tokens", "depth", "actual_depth", "sample", "seed",
                "prompt", "answers", "hash"]:
        assert key in rec
    assert rec["prompt_tokens"] == 2048 and rec["prompt"] == p.prompt and rec["sample"] == 1


def test_token_array_is_the_fast_path():
    p = make_probe("niah", 3000, 50, tokenizer=TOK)
    assert p.token_array.dtype == np.int32 and p.token_array.tolist() == p.token_ids


@pytest.mark.parametrize("call, message", [
    (lambda: make_probe("nope", 1000, 50), "choose one of: niah, multikey"),
    (lambda: make_probe("niah", 50, 50), "needs at least"),
    (lambda: make_probe("niah", 1000, 101), "0 to 100"),
    (lambda: make_probe("niah", 1000, -1), "0 to 100"),
    (lambda: make_probe("niah", 0, 50), "length must be"),
    (lambda: make_probe("niah", 1000, 50, seed=-1), "seed must be"),
    (lambda: make_probe("niah", 1000, 50, colour=3), "accepted parameters: value_kind"),
    (lambda: make_probe("niah", 1000, 50, value_kind="emoji"), "choose one of: number, word, uuid"),
    (lambda: make_probe("multikey", 1000, 50, distractors="many"), "must be int"),
    (lambda: make_probe("niah", 1000, 50, haystack="/no/such/path"), "not a file or directory"),
])
def test_bad_input_names_the_fix(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_too_short_names_a_minimum_that_works():
    with pytest.raises(ValueError) as err:
        make_probe("multiquery", 10, 50)
    minimum = int(str(err.value).split("needs at least ")[1].split()[0])
    assert len(make_probe("multiquery", minimum, 50).token_ids) == minimum
    with pytest.raises(ValueError):
        make_probe("multiquery", minimum - 1, 50)


def test_bad_haystack_files(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "bin.txt").write_bytes(b"abc\x00\x01\x02")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait.".encode("latin-1"))
    (tmp_path / "nodir").mkdir()
    for name, message in [("empty.txt", "holds no text"), ("bin.txt", "looks binary"),
                          ("latin1.txt", "not UTF-8"), ("nodir", "no .txt files")]:
        with pytest.raises(ValueError, match=message):
            make_probe("niah", 1000, 50, haystack=str(tmp_path / name))


def test_bad_tokenizer_files(tmp_path):
    (tmp_path / "notjson.json").write_text("{not json")
    (tmp_path / "wrong.json").write_text(json.dumps({"hello": 1}))
    for spec, message in [(tmp_path / "missing.json", "does not exist"),
                          (tmp_path, "holds no tokenizer.json"),
                          (tmp_path / "notjson.json", "is not JSON"),
                          (tmp_path / "wrong.json", "not a valid tokenizer.json")]:
        with pytest.raises(ValueError, match=message):
            load_tokenizer(spec)


def test_any_encode_decode_object_works_as_tokenizer():
    class Words:
        """A toy tokenizer: one id per character, but a different name and fingerprint."""

        name, fingerprint = "chars", "chars-v1"

        def encode(self, text):
            return [ord(c) for c in text]

        def decode(self, ids):
            return "".join(map(chr, ids))

    p = make_probe("niah", 1500, 50, tokenizer=Words())
    assert len(p.token_ids) == 1500 and Words().encode(p.prompt) == p.token_ids
    assert p.tokenizer_fingerprint == "chars-v1"


def test_hash_of_a_file_haystack_ignores_its_path(tmp_path):
    text = "Alpha beta gamma. Delta epsilon! Zeta eta theta?"
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.txt").write_text(text), (tmp_path / "b" / "y.txt").write_text(text)
    a = make_probe("niah", 1500, 50, haystack=str(tmp_path / "a"))
    b = make_probe("niah", 1500, 50, haystack=str(tmp_path / "b" / "y.txt"))
    assert a.hash == b.hash and a.haystack != b.haystack
    (tmp_path / "b" / "y.txt").write_text(text.replace("Delta", "Kappa"))
    assert make_probe("niah", 1500, 50, haystack=str(tmp_path / "b")).hash != a.hash


def test_an_edited_haystack_file_is_read_again(tmp_path):
    path = tmp_path / "h.txt"
    path.write_text("Alpha beta gamma. Delta epsilon!")
    assert "Delta" in make_probe("niah", 1500, 50, haystack=str(path)).context
    path.write_text("Kappa lambda mu, and more words here. Nu xi omicron!")
    assert "Delta" not in make_probe("niah", 1500, 50, haystack=str(path)).context


class _Shifted:
    """A fingerprint-less toy tokenizer: one id per character, shifted by `offset`."""

    def __init__(self, offset):
        self.offset = offset

    def encode(self, text):
        return [ord(c) + self.offset for c in text]

    def decode(self, ids):
        return "".join(chr(i - self.offset) for i in ids)


def test_tokenizers_without_a_fingerprint_do_not_share_pools():
    """Two objects of one class that tokenize differently get their own haystack pools (the
    pools are cached by fingerprint), and the same tokenizer fingerprints the same again."""
    a, b = _Shifted(0), _Shifted(7)
    pa, pb = make_probe("niah", 1500, 50, tokenizer=a), make_probe("niah", 1500, 50, tokenizer=b)
    assert a.encode(pa.prompt) == pa.token_ids and b.encode(pb.prompt) == pb.token_ids
    assert pa.tokenizer_fingerprint != pb.tokenizer_fingerprint
    assert make_probe("niah", 1500, 50, tokenizer=_Shifted(7)).hash == pb.hash


def test_pools_encode_with_the_latest_tokenizer_of_a_fingerprint():
    """A cached pool must not keep using the first tokenizer object it saw (say, a remote
    tokenizer whose server has gone); an equal one given later does the encoding."""
    class Remote(_Shifted):
        name, fingerprint, alive = "remote", "remote-v1", True

        def encode(self, text):
            assert self.alive, "encode called on a closed tokenizer"
            return super().encode(text)

    first = Remote(0)
    make_probe("niah", 1500, 50, seed=41, tokenizer=first)
    make_probe("kv", 1500, 50, seed=41, tokenizer=first)
    first.alive = False
    second = Remote(0)
    for family in ("niah", "kv"):          # longer: new haystack units must be tokenized
        p = make_probe(family, 12_000, 50, seed=41, tokenizer=second)
        assert second.encode(p.prompt) == p.token_ids


@pytest.mark.parametrize("distractors, ok", [(0, True), (19, True), (-1, False), (20, False)])
def test_multikey_distractor_range_is_named_as_given(distractors, ok):
    if ok:
        assert len(make_probe("multikey", 3000, 50, distractors=distractors).needle_spans) \
            == distractors + 1
    else:
        with pytest.raises(ValueError, match=f"distractors={distractors} is out of range; use 0 to 19"):
            make_probe("multikey", 3000, 50, distractors=distractors)


def test_a_byte_order_mark_is_not_haystack_text(tmp_path):
    (tmp_path / "bom.txt").write_bytes("Alpha beta gamma. Delta epsilon!".encode("utf-8-sig"))
    p = make_probe("niah", 1500, 50, haystack=str(tmp_path / "bom.txt"))
    assert "\ufeff" not in p.prompt and "Alpha beta" in p.context


def test_an_empty_haystack_string_is_refused_not_read_as_the_current_directory():
    with pytest.raises(ValueError, match="empty string"):
        make_probe("niah", 1500, 50, haystack="")
