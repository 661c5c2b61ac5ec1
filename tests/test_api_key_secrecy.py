"""The API key is sent to the server but never lands in the database, the CLI's output or
exports, even when the server quotes it back."""

import json

from fake_openai import FakeOpenAI, answers_for

from ctxprobe.cli import main
from ctxprobe.store import Store

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
