"""`run --param` (issue 19 item 5): family parameters as `probes show/export` take them, stored in
the run's settings, so a sweep can vary value kinds, hops, distractors."""

import re

import pytest

from ctxprobe.cli import main
from ctxprobe.store import Store

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
BASE = ["run", "--model", "builtin", "--probe", "multikey", "--lengths", "1k", "--quiet"]


def runs_by_params(db) -> dict:
    with Store(db, readonly=True) as store:
        return {str(r.settings["family_params"]): (r, store.cells(r.id)) for r in store.runs()}


def test_param_changes_the_probes_and_makes_another_run(runner, tmp_path):
    db = str(tmp_path / "r.db")
    said = []
    for extra in ([], ["--param", "multikey.value_kind=uuid"], ["--param", "value_kind=uuid"],
                  ["--param", "multikey.value_kind=number"]):      # the default: the plain run again
        result = runner.invoke(main, [*BASE[:-1], "--db", db, *extra])
        assert result.exit_code == 0, result.output
        said.append(result.stderr)
    runs = runs_by_params(db)
    assert set(runs) == {"{}", "{'multikey': {'value_kind': 'uuid'}}"}
    plain_run, [plain] = runs["{}"]
    uuid_run, [uuid] = runs["{'multikey': {'value_kind': 'uuid'}}"]
    assert plain_run.name != uuid_run.name
    assert UUID.fullmatch(uuid["answers"][0]) and plain["answers"][0].isdigit()
    assert uuid["probe_hash"] != plain["probe_hash"]
    assert " --param multikey.value_kind=uuid " in uuid_run.command
    # NAME=VALUE resumed the uuid run; spelling out the default resumed the plain one
    assert f"run {uuid_run.name} already holds every cell asked for" in said[2]
    assert f"run {plain_run.name} already holds every cell asked for" in said[3]


def test_params_for_several_families_and_ints(runner, tmp_path):
    db = str(tmp_path / "r.db")
    result = runner.invoke(main, ["run", "--model", "builtin", "--probe", "multikey,niah", "--lengths", "1k",
                                  "--param", "multikey.distractors=1", "--param", "value_kind=word",
                                  "--db", db, "--quiet"])
    assert result.exit_code == 0, result.output
    [(run, cells)] = runs_by_params(db).values()
    assert run.settings["family_params"] == {"multikey": {"distractors": 1, "value_kind": "word"},
                                             "niah": {"value_kind": "word"}}
    assert all(c["answers"][0].isalpha() for c in cells)


@pytest.mark.parametrize("param,message", [
    ("niah.value_kind=uuid", "'niah' is not among the --probe families (multikey)"),
    ("hops=3", "no --probe family has a parameter 'hops'"),
    ("multikey.nope=1", "family multikey has no parameter 'nope'"),
    ("multikey.distractors=many", "parameter distractors='many' of family multikey must be int"),
    ("value_kind", "bad --param 'value_kind': write NAME=VALUE"),
])
def test_bad_params_are_one_line_before_anything_is_stored(runner, tmp_path, param, message):
    db = tmp_path / "r.db"
    result = runner.invoke(main, [*BASE, "--db", str(db), "--param", param])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not db.exists()
