"""`ctxprobe history` reads each probe family apart (issue 19 item 7): families differ in
difficulty, so one length over their pooled cells describes neither; --pool-families asks for it."""

import matplotlib.image

from ctxprobe.cli import main
from ctxprobe.store import Store

LENGTHS = (1024, 2048, 4096, 8192)


def make_db(path):
    with Store(path) as store:
        for name, created in (("v1", "2026-01-01T00:00:00Z"), ("v2", "2026-02-01T00:00:00Z")):
            run = store.create_run(name=name, model_spec="m", model_fingerprint="fp", backend={},
                                   tokenizer_fingerprint="t", version="0.1.0", command="c",
                                   created=created)
            for family, last_good in (("niah", 8192), ("kv", 1024)):
                for length in LENGTHS:
                    for sample in range(3):
                        store.put_cell(run.id, dict(family=family, length=length, depth=50.0,
                                                    sample=sample, seed=0, probe_hash=f"{family}{sample}",
                                                    score=float(length <= last_good)))
    return str(path)


def _rule_column(output, family):
    section = output.split(f"family {family}:")[1].split("family ")[0]
    rows = [line.split() for line in section.strip().splitlines() if line.startswith("v")]   # runs v1, v2
    return [row[4] for row in rows]


def test_each_family_gets_its_own_reading_and_chart(tmp_path, runner):
    db = make_db(tmp_path / "h.db")
    chart = tmp_path / "history.png"
    result = runner.invoke(main, ["history", "--db", db, "-o", str(chart)])
    assert result.exit_code == 0, result.output
    assert _rule_column(result.output, "niah") == ["8K", "8K"]
    assert _rule_column(result.output, "kv") == ["1K", "1K"]
    for family in ("kv", "niah"):
        assert matplotlib.image.imread(tmp_path / f"history-{family}.png").ndim == 3
    assert not chart.exists()


def test_pooling_is_asked_for(tmp_path, runner):
    db = make_db(tmp_path / "h.db")
    pooled = runner.invoke(main, ["history", "--db", db, "--pool-families"])
    assert pooled.exit_code == 0, pooled.output
    assert "family " not in pooled.output and len(pooled.output.strip().splitlines()) == 3
    both = runner.invoke(main, ["history", "--db", db, "--pool-families", "--family", "kv"])
    assert both.exit_code == 2 and "pass one of them" in both.output
