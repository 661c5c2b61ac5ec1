"""`ctxprobe history`: effective length and per-length scores across runs."""

import matplotlib.image

from ctxprobe.cli import main
from ctxprobe.store import Store

LENGTHS = (1024, 2048, 4096, 8192)


def make_db(path):
    with Store(path) as store:
        # Runs created out of name order: history sorts by creation time.
        for name, model, created, last_good in (("v2", "llama-a", "2026-02-01T00:00:00Z", 4096),
                                                ("v1", "llama-a", "2026-01-01T00:00:00Z", 8192),
                                                ("q1", "qwen-b", "2026-03-01T00:00:00Z", 1024)):
            run = store.create_run(name=name, model_spec=model, model_fingerprint="fp-" + model,
                                   backend={}, tokenizer_fingerprint="t", version="0.1.0",
                                   command="c", created=created)
            for length in LENGTHS:
                for sample in range(3):
                    store.put_cell(run.id, dict(family="niah", length=length, depth=50.0,
                                                sample=sample, seed=0, probe_hash=str(sample),
                                                score=float(length <= last_good)))
    return str(path)


def test_history_table_and_chart(tmp_path, runner):
    db = make_db(tmp_path / "h.db")
    chart = tmp_path / "history.png"
    result = runner.invoke(main, ["history", "--db", db, "--model", "llama", "-o", str(chart)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:5] == ["run", "created", "model", "cells", "threshold"]
    assert [line.split()[0] for line in lines[1:3]] == ["v1", "v2"]  # oldest first, qwen filtered
    assert lines[1].split()[4] == "8K" and lines[2].split()[4] == "4K"
    assert lines[2].split()[-4:] == ["100%", "100%", "100%", "0%"]
    assert matplotlib.image.imread(chart).ndim == 3
    everything = runner.invoke(main, ["history", "--db", db, "--family", "niah"])
    assert everything.exit_code == 0 and "q1" in everything.output


def test_history_bad_input_exits_2(tmp_path, runner):
    db = make_db(tmp_path / "h.db")
    result = runner.invoke(main, ["history", "--db", db, "--model", "gpt"])
    assert result.exit_code == 2 and "no run" in result.output and "llama-a" in result.output
    result = runner.invoke(main, ["history", "--db", db, "--family", "vt"])
    assert result.exit_code == 2 and "no scored cells for family 'vt'" in result.output
