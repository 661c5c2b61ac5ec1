"""Tokenizer glue and chat templates: load_model picks up tokenizer.json and the checkpoint's template,
and renders exactly what transformers renders."""

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ctxprobe.errors import UserError
from ctxprobe.models.chat import render_chat
from ctxprobe.models.loader import read_template

pytest.importorskip("transformers")

from ctxprobe.runner import load_model  # noqa: E402
from tiny_models import save_tiny  # noqa: E402

LLAMA3_STYLE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

QWEN_STYLE = """{%- set ns = namespace(last_user=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}{%- set ns.last_user = loop.index0 %}{%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.role == "tool" %}{%- continue %}{%- endif %}
    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- if loop.index0 == ns.last_user %}{{- '<!-- ' + (messages[loop.index0] | tojson) + ' -->' }}{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"""

MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": " What is the code? "},
            {"role": "tool", "content": "ignored"}]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path, _ = save_tiny(tmp_path_factory.mktemp("chat"), "llama", num_hidden_layers=1)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the secret code is 1234", "answer the question briefly"] * 20, trainer)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "<s>"}, "eos_token": "</s>", "chat_template": LLAMA3_STYLE,
         "tokenizer_class": "PreTrainedTokenizerFast"}))
    return path


def test_load_model_picks_up_tokenizer_and_template(checkpoint):
    m = load_model(checkpoint, device="cpu")
    ids = m.tokenizer.encode("the secret code is 1234")
    assert m.tokenizer.decode(ids) == "the secret code is 1234" and max(ids) < m.config.vocab_size
    assert m.logits(ids).shape == (len(ids), 300)
    rendered = m.apply_chat_template(MESSAGES[:2])
    assert rendered.startswith("<s><|start_header_id|>system") and rendered.endswith("assistant<|end_header_id|>\n\n")


@pytest.mark.parametrize("template", [LLAMA3_STYLE, QWEN_STYLE], ids=["llama3_style", "qwen_style"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_rendering_equals_transformers(checkpoint, tmp_path, template, add_generation_prompt):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(checkpoint / "tokenizer.json"), bos_token="<s>",
                                 eos_token="</s>")
    messages = MESSAGES[:2] if template is LLAMA3_STYLE else MESSAGES
    want = hf.apply_chat_template(messages, chat_template=template, tokenize=False,
                                  add_generation_prompt=add_generation_prompt)
    got = render_chat(template, messages, add_generation_prompt=add_generation_prompt,
                      special_tokens={"bos_token": "<s>", "eos_token": "</s>"})
    assert got == want


def test_raise_exception_becomes_user_error():
    with pytest.raises(UserError, match="unknown role robot"):
        render_chat(LLAMA3_STYLE, [{"role": "robot", "content": "hi"}], special_tokens={"bos_token": ""})


def test_no_template_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no chat_template"):
        render_chat(None, MESSAGES, where=str(tmp_path))


def test_template_forms(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}))
    assert read_template(tmp_path)[0] == "D"
    (tmp_path / "tokenizer_config.json").write_text("{}")
    (tmp_path / "chat_template.jinja").write_text("J")
    assert read_template(tmp_path) == ("J", {})
