"""mrcr: the grader against hand-worked examples, the conversation's structure, exact lengths
that count the whole rendered conversation, and rendering through real chat templates
(transformers' apply_chat_template is the reference)."""

import random

import pytest

from ctxprobe.probes import load_tokenizer, make_probe, mrcr
from ctxprobe.probes.chat import TRANSCRIPT, ChatFormat
from ctxprobe.probes.prose import sentences

LLAMA3_STYLE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|im_start|>", "<|im_end|>"]


def test_grader_against_hand_worked_examples():
    g = mrcr.grade
    assert g("abcHello world", "abcHello world", "abc") == 1.0
    assert g("Hello world", "abcHello world", "abc") == 0.0            # no prefix: 0
    assert g("xabcHello world", "abcHello world", "abc") == 0.0
    # "Hello" against "Hello world": 5 matching characters of 5 + 11: 2 * 5 / 16.
    assert g("abcHello", "abcHello world", "abc") == pytest.approx(0.625)
    # "Hallo world" against "Hello world": blocks "llo world" (9) and "H" (1): 2 * 10 / 22.
    assert g("abcHallo world", "abcHello world", "abc") == pytest.approx(20 / 22)
    assert g("abc", "abcHello", "abc") == 0.0                           # prefix only: nothing matches
    assert g("  abcHello world", "abcHello world", "abc") == 1.0        # after "Assistant:" a space
    assert mrcr.ordinal(1) == "1st" and mrcr.ordinal(2) == "2nd" and mrcr.ordinal(3) == "3rd"
    assert mrcr.ordinal(4) == "4th" and mrcr.ordinal(11) == "11th" and mrcr.ordinal(22) == "22nd"


@pytest.mark.parametrize("needles", [1, 2, 4, 8])
def test_conversation_structure(needles):
    for sample in range(4):
        p = make_probe("mrcr", 6000, 40, seed=2, sample=sample, needles=needles, near_misses=2)
        msgs, meta = p.messages, p.meta
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2) + ["user"]
        assert TRANSCRIPT.render(msgs) == p.prompt and p.chat == "transcript"
        requests = [m["content"] for m in msgs[:-1:2]]
        assert requests.count(meta["request"]) == needles == meta["instances"]
        replies = [msgs[i + 1]["content"] for i, m in enumerate(msgs[:-1]) if m["content"] == meta["request"]]
        assert len(set(replies)) == needles
        nth = meta["asked_instance"]
        gold = meta["prefix"] + replies[nth - 1]
        assert p.answers == [gold] and p.answer_text == " " + gold
        assert f"Prepend {meta['prefix']} to the {mrcr.ordinal(nth)} (1 indexed)" in msgs[-1]["content"]
        assert p.grade(gold) == 1.0 and p.grade(replies[nth - 1]) == 0.0
        assert p.needle_roles[:needles] == ["needle"] * needles and len(p.distractor_spans) == 2
        assert abs(p.actual_depth - 40) < 5


def test_asked_topics_never_appear_in_other_requests():
    assert not set(mrcr.ASKED_TOPICS) & set(mrcr.FILLER_TOPICS)
    _, pairs = mrcr.exchanges(0, TRANSCRIPT)
    assert len(pairs) == mrcr.POOL
    assert not any(t in q.split() or t + "." in q or t + "?" in q for q, _ in pairs for t in mrcr.ASKED_TOPICS)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A byte-level BPE with chat special tokens, saved as transformers saves a tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + 500, show_progress=False, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = sentences(random.Random(5), 2000)
    tok.train_from_iterator(["".join(text[i:i + 40]) + "\n\n" for i in range(0, len(text), 40)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    root = tmp_path_factory.mktemp("chat-bpe")
    fast.save_pretrained(root)
    return root


@pytest.mark.parametrize("template", [LLAMA3_STYLE, CHATML], ids=["llama3_style", "chatml"])
def test_rendered_through_a_real_chat_template(hf_dir, template):
    from transformers import AutoTokenizer

    from ctxprobe.models.chat import render_chat

    hf = AutoTokenizer.from_pretrained(hf_dir)
    tok = load_tokenizer(hf_dir)
    specials = {"bos_token": "<|begin_of_text|>"}
    fmt = ChatFormat.from_renderer(lambda m: render_chat(template, m, special_tokens=specials), "template:t")
    assert fmt.head.startswith("<|begin_of_text|>" if template is LLAMA3_STYLE else "<|im_start|>user")
    for length in (1024, 4096, 32768):
        for sample in range(2):
            p = make_probe("mrcr", length, 70, seed=1, sample=sample, tokenizer=tok, chat=fmt,
                           needles=2 + 2 * sample, verify="full")
            want = hf.apply_chat_template(p.messages, chat_template=template, tokenize=False,
                                          add_generation_prompt=True)
            assert want == p.prompt and p.chat == "template:t"
            # The exact length counts the whole rendered conversation, special tokens included.
            assert hf(want, add_special_tokens=False)["input_ids"] == p.token_ids
            assert len(p.token_ids) == length
            assert p.answer_text == p.answers[0]          # no space: the template opens the answer


def test_the_tokenizers_chat_format_is_used_when_none_is_given(hf_dir):
    from ctxprobe.models.chat import render_chat

    tok = load_tokenizer(hf_dir)
    tok.chat_format = ChatFormat.from_renderer(lambda m: render_chat(CHATML, m), "template:c")
    p = make_probe("mrcr", 2048, 50, tokenizer=tok)
    assert p.chat == "template:c" and p.prompt.startswith("<|im_start|>user\n")
    assert make_probe("mrcr", 2048, 50, tokenizer=load_tokenizer(hf_dir)).hash != p.hash


def test_a_template_that_renders_turns_by_position_is_refused():
    from ctxprobe.models.chat import render_chat

    positional = ("{% for m in messages %}{% if loop.index0 == 1 %}[first reply]{% endif %}"
                  "<|{{ m.role }}|>{{ m.content }}</s>{% endfor %}<|assistant|>")
    with pytest.raises(ValueError, match="differently by its position"):
        ChatFormat.from_renderer(lambda m: render_chat(positional, m), "template:p")
    echoes = "{% for m in messages %}{{ m.content }}{% endfor %}{{ messages[-1].content }}"
    with pytest.raises(ValueError, match="exactly once"):
        ChatFormat.from_renderer(lambda m: render_chat(echoes, m), "template:e")


@pytest.mark.parametrize("length", [1000, 2049, 8192, 65536])
def test_exact_length_and_determinism(length):
    for seed in range(2):
        p = make_probe("mrcr", length, 25, seed=seed)
        assert len(p.token_ids) == length and load_tokenizer(None).encode(p.prompt) == p.token_ids
        assert p.hash == make_probe("mrcr", length, 25, seed=seed).hash
    assert make_probe("mrcr", length, 25, seed=0).hash != make_probe("mrcr", length, 25, seed=1).hash
    with pytest.raises(ValueError, match="needles=3"):
        make_probe("mrcr", length, 25, needles=3)
