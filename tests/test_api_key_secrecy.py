"""The API key is sent to the server but never lands in the database, the CLI's output or
exports, even when the server quotes it back."""

import json

import pytest
from fake_openai import FakeOpenAI, answers_for

from ctxprobe.backends.http import HttpBackend
from ctxprobe.cli import main
from ctxprobe.store import Store
from ctxprobe.sweep import Grid, open_run, run_sweep

KEY = "sk-ctxprobe-test-3f9a1c77e2b04d5e"
FRAGMENT = KEY[:20]  # no recorded text may hold even this much of the key
GRID = dict(families=["niah"], lengths=[512], depths=[0, 100], samples=2)  # 4 cells


def test_the_api_key_never_leaves_the_request(tmp_path, runner, monkeypatch):
    monkeypatch.setenv("MY_PROVIDER_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY + "-other")  # must not be picked over --api-key-env
    db = tmp_path / "r.db"
    outputs = []
    with FakeOpenAI(answers_for(**GRID), faults=["echo-auth", "leak-auth", "echo-auth-late"]) as fake:
        result = runner.invoke(main, ["run", "--model", f"openai:{fake.url}", "--probe", "niah",
                                      "--lengths", "512", "--depths", "0,100", "--samples", "2",
                                      "--api-key-env", "MY_PROVIDER_KEY", "--retries", "0",
                                      "--concurrency", "1", "--db", str(db), "--name", "secret-run"])
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
        sent = {r["headers"].get("Authorization") for r in fake.log}
    assert sent == {f"Bearer {KEY}"}                      # every request carried the key

    for args in (["runs"], ["export", "secret-run", "--format", "csv"],
                 ["export", "secret-run", "--format", "jsonl"]):
        out = runner.invoke(main, args + ["--db", str(db)])
        assert out.exit_code == 0, out.output
        outputs.append(out.output)
    exported = [json.loads(line) for line in outputs[-1].splitlines()]
    assert any("[redacted]" in (c["error"] or "") for c in exported)     # the 401's quote
    assert any("[redacted]" in (c["response"] or "") for c in exported)  # the answer's quote

    with Store(db) as store:
        run = store.get_run("secret-run")
        assert run.backend["api_key_env"] == "MY_PROVIDER_KEY"
        assert FRAGMENT not in json.dumps(run.__dict__)
    for text in outputs:
        assert FRAGMENT not in text
    for file in tmp_path.iterdir():                       # the db and its -wal / -shm files
        assert FRAGMENT.encode() not in file.read_bytes(), file.name


def test_a_key_inside_the_server_url_is_refused_before_anything_is_stored(tmp_path, runner, monkeypatch):
    # user:key@ in the URL was never sent, yet the --model spec and the command line, which the
    # run row stores as typed, held it.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    db = tmp_path / "r.db"
    with FakeOpenAI(answers_for(**GRID)) as fake:
        url = fake.url.replace("http://", f"http://user:{KEY}@")
        result = runner.invoke(main, ["run", "--model", f"openai:{url}", "--probe", "niah",
                                      "--lengths", "512", "--db", str(db), "--quiet"])
    assert result.exit_code == 2 and "holds credentials" in result.output
    assert "--api-key-env" in result.output and FRAGMENT not in result.output
    for file in tmp_path.iterdir():
        assert FRAGMENT.encode() not in file.read_bytes(), file.name


@pytest.mark.parametrize("secret_at", ["user:{key}@", "?api_key={key}", "#{key}", "?"])
def test_a_server_url_that_could_carry_a_secret_is_refused_before_anything_is_stored(
        tmp_path, runner, monkeypatch, secret_at):
    # Only scheme, host, port and path of the URL may reach the store, report, exports and `runs`;
    # a bare "?" is refused too (the URL is stored as typed).
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    db = tmp_path / "r.db"
    with FakeOpenAI(answers_for(**GRID)) as fake:
        part = secret_at.format(key=KEY)
        url = fake.url.replace("http://", "http://" + part) if "@" in part else fake.url + part
        result = runner.invoke(main, ["run", "--model", f"openai:{url}", "--probe", "niah",
                                      "--lengths", "512", "--db", str(db), "--quiet"])
        assert fake.log == []                                  # no request was made
    assert result.exit_code == 2 and "--api-key-env" in result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error: ")
    assert FRAGMENT not in result.output
    assert not db.exists() and list(tmp_path.iterdir()) == []   # nothing stored, not even a db


KEYLIKE = {
    "openai": "sk-proj-Xv3q9LmN2pR7tY1wZ8aB4cD6eF0gH",
    "github": "ghp_8sKq2Lm9Xv4Rt7Yw1Zp3Nb6Cd0Ef5Gh2Jk",
    "huggingface": "hf_QwErTyUiOpAsDfGhJkLzXcVbNm12345678",
    "random-alnum": "Zk8Qm2Xv9Lp4Rt7Yw1Np3Bc6Dd0Ef5G",
    "hex": "4f9a1c77e2b04d5e8a3b6c2d1e0f9a8b",
    "with-space": "Bearer abc",
    "a-set-variables-value": "lowercase0and0digits0only0key",
}


@pytest.mark.parametrize("name", sorted(KEYLIKE))
def test_an_api_key_env_value_that_looks_like_a_key_is_refused_without_echoing_it(
        tmp_path, runner, monkeypatch, name):
    value = KEYLIKE[name]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("SOME_PROVIDER_KEY", KEYLIKE["a-set-variables-value"])
    db = tmp_path / "r.db"
    with FakeOpenAI(answers_for(**GRID)) as fake:
        result = runner.invoke(main, ["run", "--model", f"openai:{fake.url}", "--probe", "niah",
                                      "--lengths", "512", "--db", str(db), "--quiet",
                                      "--api-key-env", value])
        assert fake.log == []
    assert result.exit_code == 2, result.output
    assert "looks like a key" in result.output and len(result.output.strip().splitlines()) == 1
    assert value not in result.output and value[:8] not in result.output
    assert not db.exists()


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "MY_PROVIDER_KEY", "HF_TOKEN", "ANTHROPIC_API_KEY",
                                  "AZURE_OPENAI_API_KEY_EASTUS2", "together_key", "Key2"])
def test_ordinary_variable_names_are_accepted(name):
    from ctxprobe.backends.http import check_api_key_env

    check_api_key_env(name, {name: "sk-whatever-1234567890", "OTHER": "x"})


def test_redaction_never_changes_the_score(tmp_path):
    # The key happens to equal a gold answer (a kv probe's UUID): the answer is scored as it came,
    # and stored redacted.
    grid = dict(families=["kv"], lengths=[512], depths=[0.0, 100.0], samples=1)
    answers = answers_for(**grid)
    key = next(iter(answers.values())).strip()
    assert len(key) >= 8 and all(a.strip() == key for a in answers.values())
    with FakeOpenAI(answers) as fake:
        backend = HttpBackend(fake.url, retry_base=0.01, environ={"UUID_KEY": key}, api_key_env="UUID_KEY")
        with Store(tmp_path / "r.db") as store:
            spec = Grid(**grid)
            run = open_run(store, backend, spec, model_spec=f"openai:{fake.url}")
            run_sweep(store, run, backend, spec, progress=False)
            cells = store.cells(run.id)
    assert len(cells) == 2
    assert all(c["response"] == " [redacted]" and c["error"] is None for c in cells)
    assert all(c["strict"] == c["lenient"] == c["score"] == 1.0 for c in cells)


def test_a_short_key_is_not_redacted_but_text_holding_it_is_withheld(tmp_path, runner, monkeypatch):
    # A 4-character key that is also part of some gold answers: replacing it would corrupt those
    # answers (and their scores). Cells whose text holds it keep their score and store a
    # withheld marker; the others are stored exactly; a warning says so once, without the key.
    answers = answers_for(**GRID)
    golds = sorted(set(answers.values()))
    key = golds[0].strip()[1:5]
    assert len(key) == 4 and key not in golds[1]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("SHORT_KEY", key)
    db = tmp_path / "r.db"
    with FakeOpenAI(answers) as fake:
        result = runner.invoke(main, ["run", "--model", f"openai:{fake.url}", "--probe", "niah",
                                      "--lengths", "512", "--depths", "0,100", "--samples", "2",
                                      "--api-key-env", "SHORT_KEY", "--db", str(db), "--name", "short",
                                      "--quiet"])
        assert {r["headers"].get("Authorization") for r in fake.log} == {f"Bearer {key}"}
    assert result.exit_code == 0, result.output
    assert result.output.count("under 8 characters") == 1 and key not in result.output
    with Store(db) as store:
        cells = store.cells(store.get_run("short").id)
    assert all(c["score"] == 1.0 and c["error"] is None for c in cells)     # scored as answered
    holding = [c for c in cells if key in c["answers"][0]]
    assert len(holding) == 2 and all(c["response"].startswith("[withheld") for c in holding)
    others = [c for c in cells if key not in c["answers"][0]]
    assert len(others) == 2 and all(c["response"] == golds[1] for c in others)
