"""Bad checkpoints fail with one line naming the file or key: from load_model (UserError) and
from `ctxprobe inspect` (exit code 2)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from ctxprobe.cli import main
from ctxprobe.errors import UserError

pytest.importorskip("transformers")

from ctxprobe.runner import load_model  # noqa: E402
from tiny_models import save_tiny  # noqa: E402


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path, _ = save_tiny(tmp_path_factory.mktemp("good"), "llama", num_hidden_layers=1)
    return path


@pytest.fixture
def ckpt(good, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(good, copy)
    return copy


def shard_holding(path, key):
    index = json.loads((path / "model.safetensors.index.json").read_text())
    return path / index["weight_map"][key]


def rewrite(file, change):
    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def missing_shard(p):
    f = shard_holding(p, "lm_head.weight")
    f.unlink()
    return f.name


def truncated(p):
    f = shard_holding(p, "model.embed_tokens.weight")
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    return f.name


def garbage_header(p):
    f = shard_holding(p, "model.embed_tokens.weight")
    f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\0" * 64)
    return f.name


def wrong_shape(p):
    key = "model.layers.0.self_attn.q_proj.weight"
    rewrite(shard_holding(p, key), lambda t: t.__setitem__(key, torch.zeros(60, 64)))
    return key


def missing_key(p):
    key = "model.layers.0.mlp.up_proj.weight"
    rewrite(shard_holding(p, key), lambda t: t.pop(key))
    return key


def unexpected_key(p):
    key = "model.layers.0.mlp.up_proj.weight"
    rewrite(shard_holding(p, key), lambda t: t.__setitem__("model.layers.0.mlp.extra.weight", torch.zeros(3)))
    return "model.layers.0.mlp.extra.weight"


def unknown_architecture(p):
    cfg = json.loads((p / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (p / "config.json").write_text(json.dumps(cfg))
    return "GPT2LMHeadModel"


def pickle_only(p):
    for f in list(p.glob("*.safetensors*")):
        f.unlink()
    (p / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    return "pytorch_model.bin"


def no_config(p):
    (p / "config.json").unlink()
    return "config.json"


def header_not_an_object(p):
    f = shard_holding(p, "model.embed_tokens.weight")
    f.write_bytes(b"\x04\x00\x00\x00\x00\x00\x00\x00[42]")
    return f.name


def header_entry_without_offsets(p):
    f = shard_holding(p, "model.embed_tokens.weight")
    head = json.dumps({"model.embed_tokens.weight": {"dtype": "F32", "shape": [1]}}).encode()
    f.write_bytes(len(head).to_bytes(8, "little") + head)
    return f.name


def config_not_an_object(p):
    (p / "config.json").write_text("[1, 2]")
    return "config.json"


def rope_scaling_incomplete(p):
    cfg = json.loads((p / "config.json").read_text())
    rope = cfg.get("rope_parameters") or cfg["rope_scaling"]
    del rope["low_freq_factor"]
    (p / "config.json").write_text(json.dumps(cfg))
    return "low_freq_factor"


def family_key_missing(p):
    cfg = json.loads((p / "config.json").read_text())
    cfg["architectures"] = ["MixtralForCausalLM"]     # a Llama config has no experts
    (p / "config.json").write_text(json.dumps(cfg))
    return "num_local_experts"


CASES = [missing_shard, truncated, garbage_header, wrong_shape, missing_key, unexpected_key,
         unknown_architecture, pickle_only, no_config, header_not_an_object, header_entry_without_offsets,
         config_not_an_object, rope_scaling_incomplete, family_key_missing]


@pytest.mark.parametrize("breaker", CASES, ids=[c.__name__ for c in CASES])
def test_load_model_names_the_fault(ckpt, breaker):
    culprit = breaker(ckpt)
    with pytest.raises(UserError) as e:
        load_model(ckpt, device="cpu")
    assert culprit in str(e.value)


@pytest.mark.parametrize("breaker", CASES, ids=[c.__name__ for c in CASES])
def test_inspect_exits_2_with_one_line(runner, ckpt, breaker):
    culprit = breaker(ckpt)
    result = runner.invoke(main, ["inspect", str(ckpt)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines() if hasattr(result, "stderr") else result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and culprit in lines[0]


def test_unknown_architecture_lists_the_supported_ones(ckpt):
    unknown_architecture(ckpt)
    with pytest.raises(UserError, match="LlamaForCausalLM.*Llama4ForCausalLM.*MixtralForCausalLM.*Qwen3Moe"):
        load_model(ckpt)


def test_pickle_path_refused_before_reading(tmp_path):
    f = tmp_path / "model.pt"
    f.write_bytes(b"anything")
    with pytest.raises(UserError, match="pickle"):
        load_model(f)


@pytest.mark.parametrize("name", ["generation_config.json", "tokenizer_config.json"])
def test_a_side_json_that_is_not_an_object_is_one_line_exit_2(tmp_path, name):
    from click.testing import CliRunner

    from ctxprobe.builtin import construct

    ckpt = tmp_path / "ckpt"
    shutil.copytree(construct.__file__.replace("construct.py", "model"), ckpt)
    (ckpt / name).write_text("[1, 2]")
    result = CliRunner().invoke(main, ["run", "--model", str(ckpt), "--probe", "niah", "--lengths", "1k",
                                       "--db", str(tmp_path / "x.db"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert f"{name}: expected a JSON object" in result.output
    assert "Traceback" not in result.output
