"""`ctxprobe run` against a real OpenAI-compatible server: `transformers serve` on a tiny random
Llama checkpoint written here, bound to 127.0.0.1 and stopped by its PID. Both the chat and
completions paths; lengths are counted with the checkpoint's own tokenizer (the server has no
/tokenize), so the server's prompt_tokens must equal each probe's length exactly."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tiny_llama import TEMPLATE_TOKENS, write_checkpoint

from ctxprobe.cli import main
from ctxprobe.store import Store
from processes import free_port

pytest.importorskip("fastapi", reason="needs transformers[serving] (pip install '.[test]')")
pytest.importorskip("uvicorn", reason="needs transformers[serving] (pip install '.[test]')")

LENGTHS = [256, 320]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    checkpoint = write_checkpoint(tmp_path_factory.mktemp("tiny-llama"))
    port = free_port()
    log = open(checkpoint.parent / "serve.log", "w+")
    cli = Path(sys.executable).with_name("transformers")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "transformers.cli.transformers"]
    proc = subprocess.Popen(command + ["serve", str(checkpoint), "--host", "127.0.0.1",
                                       "--port", str(port), "--device", "cpu"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if json.load(reply).get("status") == "ok":
                        break
            except OSError:
                pass
            assert time.time() < deadline, "transformers serve did not come up in 120 s"
            time.sleep(0.25)
        yield url + "/v1", checkpoint
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def sweep(runner, url, db, *extra):
    return runner.invoke(main, ["run", "--model", f"openai:{url}", "--probe", "niah", "--lengths",
                                ",".join(map(str, LENGTHS)), "--depths", "50", "--max-new-tokens", "3",
                                "--concurrency", "2", "--db", str(db), "--quiet", *extra])


@pytest.mark.parametrize("api, overhead", [("completions", 0), ("chat", TEMPLATE_TOKENS)])
def test_sweep_against_transformers_serve(server, runner, tmp_path, monkeypatch, api, overhead):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    url, checkpoint = server
    result = sweep(runner, url, tmp_path / "r.db", "--api", api, "--tokenizer", str(checkpoint))
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "r.db") as store:
        [run] = store.runs()
        cells = store.cells(run.id)
    assert run.backend["served_model"] == str(checkpoint)   # the one model /v1/models lists
    assert run.tokenizer_fingerprint.startswith("hf-")
    assert [c["length"] for c in cells] == LENGTHS
    for c in cells:
        assert c["error"] is None and isinstance(c["response"], str)
        assert c["strict"] in (0.0, 1.0) and 0.0 <= c["lenient"] <= 1.0
        # The server counted the prompt with the checkpoint's tokenizer: exactly our length (plus
        # its chat template's tokens); prompt_tokens is our own count of the probe.
        assert c["server_prompt_tokens"] == c["length"] + overhead
        assert c["prompt_tokens"] == c["length"]


def test_exact_lengths_are_refused_without_a_tokenizer(server, runner, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = sweep(runner, server[0], tmp_path / "r.db")
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "no /tokenize endpoint" in result.output
