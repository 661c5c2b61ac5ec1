"""`ctxprobe probes list / show / export` through click's CliRunner, bad input included."""

import json
import random
from pathlib import Path

import pytest

from ctxprobe.cli import main
from ctxprobe.probes import FAMILIES, load_tokenizer, make_probe
from ctxprobe.probes.prose import sentences


@pytest.fixture(scope="module")
def bpe_path(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=456, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sentences(random.Random(3), 500), trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def invoke(runner, *args):
    return runner.invoke(main, list(args), catch_exceptions=False)


def test_list_names_every_family(runner):
    result = invoke(runner, "probes", "list")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == list(FAMILIES)
    assert all(len(line.split()) > 3 for line in lines)


def test_show_elides_and_marks(runner):
    result = invoke(runner, "probes", "show", "niah", "--length", "8k", "--depth", "50",
                    "--window", "100")
    assert result.exit_code == 0, result.output
    p = make_probe("niah", 8192, 50)
    out = result.output
    assert ">>> The special magic number" in out and "characters ...]" in out
    assert len(out) < 3000 and p.answers[0] in out and "8,192" in out and p.hash in out


def test_show_with_tokenizer_params_and_noise(runner, bpe_path):
    result = invoke(runner, "probes", "show", "multikey", "--length", "3000", "--depth", "10",
                    "--tokenizer", str(bpe_path), "--haystack", "noise", "--param", "value_kind=uuid",
                    "--param", "distractors=2", "--seed", "4")
    assert result.exit_code == 0, result.output
    p = make_probe("multikey", 3000, 10, seed=4, tokenizer=load_tokenizer(bpe_path),
                   haystack="noise", value_kind="uuid", distractors=2)
    assert p.hash in result.output and result.output.count(">>>") == 3


def test_export_jsonl(runner, tmp_path, bpe_path):
    out = tmp_path / "p.jsonl"
    result = invoke(runner, "probes", "export", "niah,kv", "--lengths", "1k..2k:x2", "--depths",
                    "0..100:3", "--samples", "2", "--seed", "9", "--tokenizer", str(bpe_path),
                    "-o", str(out))
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 * 2 * 3 * 2 and "wrote 24 probes" in result.output
    tok = load_tokenizer(bpe_path)
    for r in records:
        for key in ["family", "length", "prompt_tokens", "depth", "actual_depth", "sample",
                    "seed", "prompt", "answers", "hash"]:
            assert key in r
        assert r["prompt_tokens"] == r["length"] == len(tok.encode(r["prompt"]))
        assert abs(r["actual_depth"] - r["depth"]) < 25 and r["seed"] == 9
    first = records[0]
    assert first["hash"] == make_probe(first["family"], first["length"], first["depth"], seed=9,
                                       sample=first["sample"], tokenizer=tok).hash
    assert len({r["hash"] for r in records}) == len(records)


def test_export_to_stdout(runner):
    result = invoke(runner, "probes", "export", "cwe", "--lengths", "2000", "--depths", "0",
                    "-o", "-")
    assert result.exit_code == 0
    assert json.loads(result.stdout.splitlines()[0])["prompt_tokens"] == 2000


@pytest.mark.parametrize("args, message", [
    (["show", "nosuch"], "unknown probe family 'nosuch'; choose one of: niah, multikey, multivalue"),
    (["show", "niah", "--length", "100"], "needs at least"),
    (["show", "niah", "--length", "4q"], "bad length '4q'"),
    (["show", "niah", "--depth", "150"], "from 0 to 100"),
    (["show", "niah", "--depth", "-1"], "from 0 to 100"),
    (["show", "niah", "--param", "value_kind"], "NAME=VALUE"),
    (["show", "niah", "--param", "size=3"], "accepted parameters: value_kind"),
    (["show", "niah", "--haystack", "/no/such/dir"], "not a file or directory"),
    (["show", "niah", "--tokenizer", "/no/such/tokenizer.json"], "does not exist"),
    (["export", "nosuch", "-o", "-"], "choose one of"),
    (["export", "niah", "--lengths", "1k..", "-o", "-"], "1k..1M:x2"),
    (["export", "niah", "--depths", "0..200:3", "-o", "-"], "outside 0 to 100"),
    (["export", "niah", "--samples", "0", "-o", "-"], "at least 1"),
    (["export", ",", "-o", "-"], "no family in ','"),
])
def test_bad_input_one_line_exit_2(runner, args, message):
    result = runner.invoke(main, ["probes", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", b"", "holds no text"),
    ("binary.txt", b"\x00\x01\x02abc", "looks binary"),
    ("latin.txt", "déjà vu.".encode("latin-1"), "not UTF-8"),
])
def test_bad_haystack_files_exit_2(runner, tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    result = runner.invoke(main, ["probes", "show", "niah", "--haystack", str(tmp_path / name)])
    assert result.exit_code == 2 and message in result.stderr


@pytest.mark.parametrize("content, message", [
    (b"{broken", "is not JSON"),
    (b'{"model": 1}', "not a valid tokenizer.json"),
    (b"\xff\xfe", "is not JSON"),
])
def test_bad_tokenizer_files_exit_2(runner, tmp_path, content, message):
    (tmp_path / "tokenizer.json").write_bytes(content)
    for spec in (tmp_path / "tokenizer.json", tmp_path):
        result = runner.invoke(main, ["probes", "show", "niah", "--tokenizer", str(spec)])
        assert result.exit_code == 2 and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_every_command_has_an_example(runner):
    for args in (["probes"], ["probes", "list"], ["probes", "show"], ["probes", "export"]):
        result = invoke(runner, *args, "--help")
        assert result.exit_code == 0 and "Example:" in result.output


def test_failed_export_keeps_the_old_file_and_leaves_no_partial_one(runner, tmp_path):
    """The second length is too short: the probes of the first must not replace the old file,
    and no temporary file may be left beside it."""
    out = tmp_path / "p.jsonl"
    out.write_text("old\n")
    result = runner.invoke(main, ["probes", "export", "niah", "--lengths", "2000,100",
                                  "--depths", "0", "-o", str(out)])
    assert result.exit_code == 2 and "needs at least" in result.stderr
    assert out.read_text() == "old\n" and sorted(tmp_path.iterdir()) == [out]
    result = invoke(runner, "probes", "export", "niah", "--lengths", "2000", "--depths", "0,50",
                    "-o", str(out))
    assert result.exit_code == 0 and len(out.read_text().splitlines()) == 2
    assert sorted(tmp_path.iterdir()) == [out]


def test_export_checks_every_family_parameter_before_building(runner, tmp_path, monkeypatch):
    from ctxprobe import probes
    built = []
    monkeypatch.setattr(probes, "make_probe", lambda *a, **k: built.append(a))
    result = runner.invoke(main, ["probes", "export", "niah,kv", "--param", "value_kind=uuid",
                                  "--lengths", "2000", "--depths", "0", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "family kv has no parameter 'value_kind'" in result.stderr
    assert built == [] and list(tmp_path.iterdir()) == []


def test_export_to_a_missing_directory_is_one_line_exit_2(runner, tmp_path):
    result = runner.invoke(main, ["probes", "export", "niah", "--lengths", "2000", "--depths", "0",
                                  "-o", str(tmp_path / "no" / "such" / "p.jsonl")])
    assert result.exit_code == 2 and result.stderr.startswith("error: ")
    assert "does not exist" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_show_refuses_a_negative_window(runner):
    result = runner.invoke(main, ["probes", "show", "niah", "--length", "1500", "--window", "-5"])
    assert result.exit_code == 2 and "window" in result.output + result.stderr


def test_export_writes_through_symlinks_and_devices(runner, tmp_path):
    real = tmp_path / "real.jsonl"
    real.write_text("old\n")
    (tmp_path / "link.jsonl").symlink_to(real)
    args = ["probes", "export", "niah", "--lengths", "2000", "--depths", "0", "-o"]
    assert invoke(runner, *args, str(tmp_path / "link.jsonl")).exit_code == 0
    assert (tmp_path / "link.jsonl").is_symlink() and len(real.read_text().splitlines()) == 1
    assert invoke(runner, *args, "/dev/null").exit_code == 0
    assert not Path("/dev/null").is_file() and Path("/dev/null").exists()
