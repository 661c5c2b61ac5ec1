"""Bad input, everywhere: one line on stderr, exit 2, nothing stored, no traceback. Grids too
large to build (refused with their cell count before any list is built), seeds the store
cannot hold, timeouts that are not a number of seconds, checkpoint configs with negative or
wrongly typed fields, tokenizer.json files the library loads but cannot encode with, baselines
of the wrong shape, options click cannot parse; Ctrl-C during start-up (exit 130, one line);
and run names drawn in figures as text, never as matplotlib math."""

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from fake_openai import FakeOpenAI, answers_for
from matplotlib.text import Text
from processes import free_port
from tiny_llama import write_checkpoint

from ctxprobe.cli import main
from ctxprobe.store import Store

ROOT = Path(__file__).resolve().parents[1]
WAIT = 120   # generous bound on a child's wait (never a timing assertion)


@pytest.fixture(autouse=True)
def no_ambient_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def one_line(stderr: str) -> str:
    """The single `error: ...` line of stderr (asserted to be the only one)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def refused(result, *fragments) -> str:
    """A CliRunner result that is one line of bad input naming every fragment."""
    assert result.exit_code == 2, result.output
    line = one_line(result.stderr)
    for fragment in fragments:
        assert fragment in line, line
    return line


def child_env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": ""}


def limited_memory():  # in the child: a grid built in memory hits the limit instead of the machine
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


# -- grids too large to build -------------------------------------------------------------------

@pytest.mark.parametrize("flag, value, count", [
    ("--samples", "100000000", "100,000,000 cells"),
    ("--depths", "0..100:99999999", "99,999,999 depths"),
    ("--lengths", "1..1M:x1.0000001", "1,048,576 lengths"),
])
def test_a_grid_too_large_is_refused_with_its_cell_count_before_it_is_built(tmp_path, flag, value, count):
    # In a child with 1 GiB of address space: building the grid (or its lengths) would fail or
    # run on; counting it does not. The server is never reached: the grid is refused first.
    args = {"--samples": "1", "--depths": "50", "--lengths": "1k", flag: value}
    command = [sys.executable, "-m", "ctxprobe", "run", "--model", f"openai:http://127.0.0.1:{free_port()}/v1",
               "--probe", "niah", "--db", str(tmp_path / "r.db"), "--quiet"]
    for name, v in args.items():
        command += [name, v]
    child = subprocess.run(command, env=child_env(), cwd=tmp_path, capture_output=True, text=True,
                           timeout=WAIT, preexec_fn=limited_memory)
    assert child.returncode == 2, child.stderr
    line = one_line(child.stderr)
    assert count in line and "1,000,000" in line, line
    assert not (tmp_path / "r.db").exists()


def test_grid_limits_in_the_api():
    from ctxprobe.errors import UserError
    from ctxprobe.grid import MAX_CELLS, check_grid, parse_lengths
    from ctxprobe.sweep import Grid

    assert check_grid(["niah", "kv"], [1024] * 3, [0, 50], 7) == 2 * 1 * 2 * 7
    assert check_grid(["niah"], [1024], [50], MAX_CELLS) == MAX_CELLS
    with pytest.raises(UserError, match="1,000,001 cells"):
        Grid(families=["niah"], lengths=[1024], depths=[50.0], samples=MAX_CELLS + 1)
    with pytest.raises(UserError, match="69,08[0-9],[0-9]{3} steps"):   # few lengths, but 69M steps
        parse_lengths("1..1000:x1.0000001")
    with pytest.raises(UserError, match="more than 1,073,741,824 tokens"):
        parse_lengths("1k..4096M:x2")
    assert len(parse_lengths("1k..1M:x1.0001")) == 55505   # a fine factor that is still allowed


# -- seeds and timeouts -------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [str(2**63), str(10**30), "-1"])
def test_a_seed_the_store_cannot_hold_is_refused_before_any_request(runner, tmp_path, seed):
    db = tmp_path / "r.db"
    with FakeOpenAI() as fake:
        result = runner.invoke(main, ["run", "--model", f"openai:{fake.url}", "--probe", "niah",
                                      "--lengths", "512", "--seed", seed, "--db", str(db),
                                      "--tokenizer", "byte", "--quiet"])
        refused(result, "--seed", "9223372036854775807")
        assert fake.log == []
    assert not db.exists()


def test_the_largest_seed_is_stored_and_reread(runner, tmp_path):
    seed = 2**63 - 1
    db = tmp_path / "r.db"
    with FakeOpenAI(answers_for(["niah"], [512], [50], 1, seed=seed)) as fake:
        result = runner.invoke(main, ["run", "--model", f"openai:{fake.url}", "--probe", "niah",
                                      "--lengths", "512", "--seed", str(seed), "--db", str(db),
                                      "--tokenizer", "byte", "--quiet"])
    assert result.exit_code == 0, result.output
    with Store(db, readonly=True) as store:
        [run] = store.runs()
        [cell] = store.cells(run.id)
    assert cell["seed"] == seed and cell["score"] == 1.0


@pytest.mark.parametrize("timeout", ["inf", "nan", "-1", "0", "1e300", "soon"])
def test_a_timeout_that_is_not_a_number_of_seconds_is_refused(runner, tmp_path, timeout):
    result = runner.invoke(main, ["run", "--model", f"openai:http://127.0.0.1:{free_port()}/v1",
                                  "--probe", "niah", "--lengths", "1k", "--timeout", timeout,
                                  "--db", str(tmp_path / "r.db"), "--quiet"])
    refused(result, "--timeout", timeout)
    assert not (tmp_path / "r.db").exists()


def test_an_option_click_cannot_parse_is_one_line(runner, tmp_path):
    result = runner.invoke(main, ["run", "--model", "m", "--probe", "niah", "--lengths", "1k",
                                  "--samples", "many"])
    refused(result, "--samples", "many", "run --help")


# -- checkpoints: config.json and tokenizer.json ------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("tiny"))


def copy_with(checkpoint, root, **config_changes):
    path = root / "model"
    shutil.copytree(checkpoint, path)
    config = json.loads((path / "config.json").read_text())
    config.update(config_changes)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("field, value", [
    ("num_hidden_layers", -1), ("num_hidden_layers", "2"), ("hidden_size", 32.5),
    ("vocab_size", -5), ("num_attention_heads", 0), ("rms_norm_eps", "tiny"),
    ("max_position_embeddings", -4), ("eos_token_id", "x"), ("head_dim", True),
    ("tie_word_embeddings", "false"), ("num_hidden_layers", 10**9),
    ("rope_parameters", {"rope_theta": -1, "rope_type": "default"}),
    ("rope_parameters", [10000]), ("num_key_value_heads", 3),
])
def test_a_config_field_of_the_wrong_type_or_sign_is_one_line(checkpoint, runner, tmp_path, field, value):
    model = copy_with(checkpoint, tmp_path, **{field: value})
    db = tmp_path / "r.db"
    name = "rope_theta" if field == "rope_parameters" and isinstance(value, dict) else field
    run = runner.invoke(main, ["run", "--model", str(model), "--probe", "niah", "--lengths", "256",
                               "--db", str(db), "--quiet"])
    refused(run, "config.json", f"'{name}'")
    if db.exists():
        with Store(db, readonly=True) as store:
            assert store.runs() == []
    refused(runner.invoke(main, ["inspect", str(model)]), "config.json", f"'{name}'")


def test_real_config_quirks_still_load(checkpoint, runner, tmp_path):
    # Llama 4 Scout's config writes attn_temperature_tuning as 4; nulls mean "not set".
    model = copy_with(checkpoint, tmp_path, attn_temperature_tuning=4, head_dim=None, sliding_window=None)
    assert runner.invoke(main, ["inspect", str(model)]).exit_code == 0


@pytest.fixture(scope="module")
def unencodable(checkpoint, tmp_path_factory):
    """The checkpoint with a WordLevel tokenizer.json whose unk_token is not in its vocabulary:
    the library loads it, and refuses at encode time any word it does not know."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    path = tmp_path_factory.mktemp("unk") / "model"
    shutil.copytree(checkpoint, path)
    vocab = {".": 0, "</s>": 1, "<s>": 2, "<|user|>": 3, "<|assistant|>": 4}
    vocab.update({f"w{i}": i for i in range(5, 400)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    return path


def test_a_tokenizer_that_fails_at_encode_time_is_one_line_naming_the_file(unencodable, runner, tmp_path):
    db = tmp_path / "r.db"
    run = runner.invoke(main, ["run", "--model", str(unencodable), "--probe", "niah", "--lengths", "256",
                               "--db", str(db), "--quiet"])
    file = str(unencodable / "tokenizer.json")
    refused(run, file, "cannot encode", "[UNK]")
    if db.exists():
        with Store(db, readonly=True) as store:
            assert store.runs() == []
    show = runner.invoke(main, ["probes", "show", "niah", "--length", "300", "--tokenizer", file])
    refused(show, file, "cannot encode")


# -- baselines of the wrong shape ---------------------------------------------------------------

@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline")
    db = root / "c.db"
    with Store(db) as store:
        run = store.create_run(name="a", model_spec="m", model_fingerprint="fp", backend={},
                               tokenizer_fingerprint="t", version="0.1.0", command="c")
        for length in (1024, 2048):
            for sample in range(3):
                store.put_cell(run.id, dict(family="niah", length=length, depth=50.0, sample=sample,
                                            seed=0, probe_hash=f"{length}-{sample}", score=1.0,
                                            exact=True, logprob=-0.1, response="42"))
    base = root / "base.json"
    from click.testing import CliRunner

    assert CliRunner().invoke(main, ["baseline", "a", "--db", str(db), "-o", str(base)]).exit_code == 0
    return str(db), json.loads(base.read_text())


@pytest.mark.parametrize("change, fragments", [
    (lambda r: r["cells"][1].update(length="4k"), ["cell 1", "length", "whole number"]),
    (lambda r: r["cells"][2].update(score="high"), ["cell 2", "score"]),
    (lambda r: r["cells"][0].update(score=7), ["cell 0", "score", "0 to 1"]),
    (lambda r: r["cells"][0].update(depth=-5), ["cell 0", "depth"]),
    (lambda r: r["cells"][3].update(family=["niah"]), ["cell 3", "family"]),
    (lambda r: r["cells"][0].update(sample=None), ["cell 0", "sample"]),
    (lambda r: r["cells"][0].update(logprob=float("nan")), ["cell 0", "logprob"]),
    (lambda r: r["cells"][0].update(answers="42"), ["cell 0", "answers"]),
    (lambda r: r["cells"].append(dict(r["cells"][0])), ["cell 6", "repeats cell 0"]),
    (lambda r: r.update(run=[1, 2]), ["'run'"]),
])
def test_a_baseline_of_the_wrong_shape_is_one_line_naming_the_file(results, runner, tmp_path, change, fragments):
    db, record = results
    record = json.loads(json.dumps(record))
    change(record)
    base = tmp_path / "bad.json"
    base.write_text(json.dumps(record))
    result = runner.invoke(main, ["compare", str(base), "a", "--db", db])
    refused(result, str(base), *fragments)
    # The same file as B.
    refused(runner.invoke(main, ["compare", "a", str(base), "--db", db]), str(base))


# -- Ctrl-C during start-up ---------------------------------------------------------------------

def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path):
    """`ctxprobe run` is interrupted while it waits, in start-up, for the server's model list
    (a server that accepts and never answers); known to be there once the request arrived."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    arrived = threading.Event()
    held = []

    def accept():
        conn, _ = listener.accept()
        held.append(conn)
        conn.recv(65536)   # the request for /v1/models: ctxprobe now waits for the answer
        arrived.set()

    threading.Thread(target=accept, daemon=True).start()
    port = listener.getsockname()[1]
    command = [sys.executable, "-m", "ctxprobe", "run", "--model", f"openai:http://127.0.0.1:{port}/v1",
               "--probe", "niah", "--lengths", "1k", "--db", str(tmp_path / "r.db"), "--quiet",
               "--timeout", "600", "--retries", "0"]
    child = subprocess.Popen(command, env=child_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert arrived.wait(WAIT), "ctxprobe never asked the server for its models"
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=WAIT)
    finally:
        child.kill()
        listener.close()
        for conn in held:
            conn.close()
    assert child.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: ctxprobe run stopped"), err
    assert "Traceback" not in err and "Aborted" not in err


# -- names are text, never markup ---------------------------------------------------------------

NAMES = ["run-$\\foo{$", "cost $x^2$ v$1", "a\\$b$c$"]


def shown_texts(fig) -> list[tuple[str, bool]]:
    """(what matplotlib displays, whether it typesets it as math) for every text of the figure."""
    return [t._preprocess_math(t.get_text()) for t in fig.findobj(Text) if t.get_text()]


def assert_literal(fig, *names):
    fig.canvas.draw()   # layout and mathtext parsing happen here: a bad name raised before
    shown = shown_texts(fig)
    for name in names:
        hits = [(text, math) for text, math in shown if name in text]
        assert hits and not any(math for _, math in hits), (name, shown)


def test_figures_draw_names_with_dollars_as_plain_text():
    from ctxprobe import plots
    fig = plots.history(NAMES, {NAMES[1]: ([1024, 2048, 4096], None, None)}, [1024],
                        np.array([[1.0], [0.5], [0.25]]), title=NAMES[0])
    assert_literal(fig, *NAMES)
    fig = plots.heatmap([1024, 2048], [0, 50], np.ones((2, 2)), np.ones((2, 2), int), title=NAMES[1])
    assert_literal(fig, NAMES[1])
    fig = plots.falloff([1024, 2048], np.array([1.0, 0.5]), np.array([0.9, 0.4]), np.array([1.0, 0.6]),
                        title=NAMES[2], label=NAMES[0])
    assert_literal(fig, NAMES[2], NAMES[0])
    fig = plots.delta_heatmap([NAMES[0]], [1024], np.array([[-0.5]]), np.array([[True]]),
                              np.array([[True]]), np.array([[3]]), title=NAMES[1])
    assert_literal(fig, NAMES[0], NAMES[1])
    fig = plots.grid([(NAMES[2], [1024], [50], np.ones((1, 1)), np.ones((1, 1), int))], title=NAMES[0])
    assert_literal(fig, NAMES[2], NAMES[0])


def test_compare_and_history_charts_render_runs_named_with_dollars(runner, tmp_path):
    db = tmp_path / "r.db"
    names = ["base $\\frac{$", "cand $x^2$"]
    with Store(db) as store:
        for i, name in enumerate(names):
            run = store.create_run(name=name, model_spec="m", model_fingerprint="fp", backend={},
                                   tokenizer_fingerprint="t", version="0.1.0", command="c",
                                   created=f"2026-01-0{i + 1}T00:00:00Z")
            for length in (1024, 2048):
                for sample in range(3):
                    store.put_cell(run.id, dict(family="niah", length=length, depth=50.0, sample=sample,
                                                seed=0, probe_hash=f"{length}-{sample}", score=1.0))
    delta = tmp_path / "delta.png"
    result = runner.invoke(main, ["compare", *names, "--db", str(db), "-o", str(delta)])
    assert result.exit_code == 0, result.output
    history = tmp_path / "history.svg"
    result = runner.invoke(main, ["history", "--db", str(db), "-o", str(history)])
    assert result.exit_code == 0, result.output
    assert matplotlib.image.imread(delta).ndim == 3 and history.stat().st_size > 0
