"""Progress on long work (issue 19 item 3): `probes export` has a bar over its probes, and a
native pass reports its layers, shown on the sweep's bar with an estimate; all of it on stderr,
none of it with --quiet."""

import io
import json
import re

from tqdm import tqdm

from ctxprobe.cli import main
from ctxprobe.pass_progress import BarPostfix, listen
from ctxprobe.runner import prefill


def test_probes_export_shows_a_bar_over_its_probes_on_stderr(runner, tmp_path):
    args = ["probes", "export", "niah", "--lengths", "512,1k", "--depths", "0,50", "-o", "-"]
    shown = runner.invoke(main, args)
    assert shown.exit_code == 0, shown.output
    assert "4/4" in shown.stderr and "probe" in shown.stderr and "export" in shown.stderr
    rows = [json.loads(line) for line in shown.stdout.splitlines()]   # stdout: JSONL and nothing else
    assert len(rows) == 4
    quiet = runner.invoke(main, args + ["--quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert "4/4" not in quiet.stderr and "%|" not in quiet.stderr
    assert "wrote 4 probes" in quiet.stderr and quiet.stdout == shown.stdout


def test_prefill_reports_every_layer_of_its_pass(tiny_models):
    model = tiny_models("llama")
    seen = []
    with listen(lambda done, total, tokens: seen.append((done, total, tokens))):
        prefill(model, list(range(1, 40)))
    n = len(model.blocks)
    assert seen == [(k, n, 39) for k in range(n + 1)]
    prefill(model, list(range(1, 40)))      # no listener: nothing recorded, nothing fails
    assert len(seen) == n + 1


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_bar_shows_the_layer_and_an_estimate_then_drops_them_when_the_pass_ends():
    out, clock = io.StringIO(), Clock()
    bar = tqdm(total=1, file=out, unit="cell")
    postfix = BarPostfix(bar, clock=clock)
    postfix.sweep("0 tok/s, 0 errors")
    postfix(0, 48, 65536)
    assert bar.postfix == "0 tok/s, 0 errors | 65,536-token pass: layer 0/48"
    assert "65,536-token pass: layer 0/48" in out.getvalue()      # drawn at once
    clock.now += 120.0
    postfix(12, 48, 65536)               # 10 s a layer so far, 36 layers left
    assert bar.postfix.endswith("65,536-token pass: layer 12/48, ~6m00s left")
    assert "layer 12/48, ~6m00s left" in out.getvalue()
    clock.now += 0.1
    postfix(13, 48, 65536)               # within a second of the last drawing: set, not drawn
    assert "layer 13/48" in bar.postfix and "layer 13/48" not in out.getvalue()
    postfix(48, 48, 65536)
    assert bar.postfix == "0 tok/s, 0 errors"
    bar.close()


def test_a_native_run_shows_its_layers_on_stderr_and_quiet_shows_nothing(runner, tmp_path):
    args = ["run", "--model", "builtin", "--probe", "niah", "--lengths", "512", "--depths", "50",
            "--db", str(tmp_path / "r.db")]
    shown = runner.invoke(main, args)
    assert shown.exit_code == 0, shown.output
    assert re.search(r"[\d,]+-token pass: layer 0/2", shown.stderr), shown.stderr
    assert "token pass" not in shown.stdout
    quiet = runner.invoke(main, args[:-1] + [str(tmp_path / "q.db"), "--quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert "token pass" not in quiet.stderr and "token pass" not in quiet.stdout
