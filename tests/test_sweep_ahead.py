"""The sweep builds the next probes while requests are in flight (ctxprobe/sweep/building.py),
and `--verify` reaches the probes of `probes show/export` and `run`."""

import json
import threading
import time

import pytest
from fake_openai import FakeOpenAI, answers_for

from ctxprobe import probes
from ctxprobe.backends.base import CellResult
from ctxprobe.cli import main
from ctxprobe.commands.options import VERIFY_MODES
from ctxprobe.store import Store
from ctxprobe.sweep import Grid, run_sweep
from ctxprobe.sweep.building import built_ahead
from ctxprobe.probes import exactness, load_tokenizer


class GatedBackend:
    """Answers at once, except the first request, which waits (up to `patience` seconds) until
    `enough` probes have been built: a server held busy while the client should keep building."""

    kind, concurrency, model_fingerprint, settings, identity = "http", 1, "gated", {}, {}

    def __init__(self, built: list, enough: int, patience: float = 30.0):
        self.tokenizer = load_tokenizer(None)
        self.built, self.enough, self.patience = built, enough, patience
        self.built_during_first = None

    def run_group(self, group):
        if self.built_during_first is None:
            deadline = time.monotonic() + self.patience
            while len(self.built) < self.enough and time.monotonic() < deadline:
                time.sleep(0.01)
            self.built_during_first = len(self.built)
        return [CellResult(response=p.answer_text, prompt_tokens=len(p.token_array)) for p in group]


def test_next_probes_are_built_while_the_first_request_is_in_flight(tmp_path, monkeypatch):
    built, make = [], probes.make_probe
    monkeypatch.setattr(probes, "make_probe", lambda *a, **k: built.append(1) or make(*a, **k))
    # 4 batches (one per length) of 2 cells. With one request in flight and two more queued,
    # building ahead reaches 6 probes before the first answer; building in the sweep's own
    # thread stopped at 4 (two batches) until that answer came back.
    spec = Grid(families=["niah"], lengths=[600, 700, 800, 900], depths=[0, 100], samples=1)
    backend = GatedBackend(built, enough=6)
    with Store(tmp_path / "a.db") as store:
        run = store.create_run(name="ahead", model_spec="gated", model_fingerprint="gated", backend={},
                               tokenizer_fingerprint=backend.tokenizer.fingerprint, version="test",
                               command="", settings={})
        stats = run_sweep(store, run, backend, spec, progress=False)
        cells = store.cells(run.id)
    assert backend.built_during_first >= 6
    assert stats.finished == 8 and stats.errored == 0 and len(built) == 8
    assert sorted((c["length"], c["depth"]) for c in cells) == [(n, d) for n in (600, 700, 800, 900)
                                                                for d in (0.0, 100.0)]
    assert all(c["score"] == 1.0 for c in cells)


def test_built_ahead_keeps_order_raises_in_place_and_stops_when_closed():
    assert list(built_ahead(iter(range(50)), ahead=3)) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise ValueError("length 10 is too short")

    got = []
    with pytest.raises(ValueError, match="too short"):
        for x in built_ahead(failing(), ahead=2):
            got.append(x)
    assert got == [1, 2]

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    ahead = built_ahead(endless(), ahead=2)
    assert next(ahead) == 0
    ahead.close()
    time.sleep(0.5)
    settled = len(produced)
    time.sleep(0.5)
    assert settled == len(produced) <= 6          # the producer stopped, a few items ahead
    assert not [t for t in threading.enumerate() if t.name == "ctxprobe-probe-builder" and t.is_alive()]


# -- --verify on the command line ---------------------------------------------------------------

def test_verify_choices_are_the_checks():
    assert set(VERIFY_MODES) == set(exactness.MODES) and VERIFY_MODES[0] == exactness.DEFAULT_MODE


@pytest.mark.parametrize("flag, shown", [([], "checked sampled"), (["--verify", "full"], "checked full"),
                                         (["--verify", "pairs"], "checked pairs"),
                                         (["--verify", "junctions"], "checked junctions")])
def test_show_reports_the_check(runner, flag, shown):
    result = runner.invoke(main, ["probes", "show", "niah", "--length", "8k", *flag])
    assert result.exit_code == 0, result.output
    assert shown in result.output


def test_bad_verify_mode_exit_2(runner):
    result = runner.invoke(main, ["probes", "export", "niah", "--verify", "quick", "-o", "-"])
    assert result.exit_code == 2 and "'quick' is not one of" in result.output


def test_export_and_run_pass_the_mode(runner, tmp_path, monkeypatch):
    seen = []
    check = exactness.check
    monkeypatch.setattr(exactness, "check", lambda tok, asm, mode: seen.append(mode) or check(tok, asm, mode))
    out = tmp_path / "p.jsonl"
    result = runner.invoke(main, ["probes", "export", "niah", "--lengths", "6000", "--depths", "0,100",
                                  "--verify", "pairs", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 2 and set(seen) == {"pairs"}
    answers = answers_for(families=["niah"], lengths=[512], depths=[0, 100], samples=1)
    seen.clear()
    with FakeOpenAI(answers, tokenize=None) as fake:
        result = runner.invoke(main, ["run", "--model", f"openai:{fake.url}", "--probe", "niah",
                                      "--lengths", "512", "--depths", "0,100", "--tokenizer", "byte",
                                      "--db", str(tmp_path / "r.db"), "--quiet", "--verify", "full"],
                               env={"OPENAI_API_KEY": ""})
    assert result.exit_code == 0, result.output
    assert set(seen) == {"full"} and len(seen) >= 2
    with Store(tmp_path / "r.db", readonly=True) as store:
        [run] = store.runs()
        assert json.dumps(run.settings).find("verify") == -1   # not part of the run's identity
        assert all(c["score"] == 1.0 for c in store.cells(run.id))
