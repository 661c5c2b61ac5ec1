"""The relative effective length (NoLiMa's rule) beside the absolute one for the families that
literal matching cannot pass, in `ctxprobe run`'s summary and the report; and the haystack
coherence knob (coherent scenes against the same sentences shuffled)."""

from collections import Counter

import numpy as np
import pytest

from ctxprobe.analysis.effective_length import both_readings, reads_relative
from ctxprobe.analysis.report import effective_rows
from ctxprobe.sweep.summary import summarize
from ctxprobe.probes import FAMILIES, make_probe
from ctxprobe.probes.haystacks import load_haystack
from ctxprobe.probes.tokenizers import ByteTokenizer

# Mean scores by length: a hard family that starts at 60% and holds 85% of that to 4K, and a
# literal one that stays above 85% to 8K.
CURVES = {"nolima": {1024: 0.6, 2048: 0.6, 4096: 0.55, 8192: 0.3, 16384: 0.1},
          "niah": {1024: 1.0, 2048: 1.0, 4096: 1.0, 8192: 0.9, 16384: 0.5}}


def cells(curves=CURVES, n=20):
    out = []
    for family, curve in curves.items():
        for length, mean in curve.items():
            for i in range(n):
                out.append({"family": family, "length": length, "depth": 50.0, "sample": i, "seed": 0,
                            "score": float(i < round(mean * n)), "error": None, "probe_hash": "h"})
    return out


def test_which_families_read_relative():
    assert {f for f in FAMILIES if reads_relative(f)} == {"nolima", "nolima-literal", "mrcr"}
    assert not reads_relative("no-such-family")


def test_both_readings_follow_nolimas_rule():
    lengths = sorted(CURVES["nolima"])
    absolute, relative = both_readings(lengths, [CURVES["nolima"][n] for n in lengths])
    assert absolute.length is None and not absolute.relative
    assert relative.relative and relative.cutoff == pytest.approx(0.85 * 0.6) and relative.length == 4096


def test_run_summary_names_both_readings():
    text = summarize(cells())
    assert "nolima: effective length (absolute: score >= 85%): below the shortest length tested (1K)" in text
    assert ("nolima: effective length (relative: score >= 85% of its own mean score at the 2 shortest "
            "lengths (NoLiMa's rule); own score 60%, cutoff 51%): 4K") in text
    assert "niah: effective length (score >= 85%): 8K" in text and "niah: effective length (relative" not in text
    zero = summarize(cells({"mrcr": {1024: 0.0, 2048: 0.0}}))
    assert "mrcr: effective length (relative" in zero and "scores 0 at the shortest lengths" in zero


def test_report_table_has_the_relative_column():
    from ctxprobe.analysis.effective_length import effective_lengths

    scored = cells()
    rows = {r[0]: r for r in effective_rows(effective_lengths(scored, n_boot=20), scored)}
    assert rows["nolima"][-1] == "4K (85% of 60% = 51%)" and rows["nolima"][4].startswith("none")
    assert rows["niah"][-1] == "-" and rows["niah"][4] == "8K"
    relative_table = effective_rows(effective_lengths(scored, relative=True, n_boot=20), scored)
    assert all(r[-1] == "-" for r in relative_table)   # the table itself is relative: no second reading


def test_report_page_says_which_reading_is_which(tmp_path):
    from ctxprobe.analysis.report import build_report
    from ctxprobe.store import Store

    with Store(tmp_path / "r.db") as store:
        run = store.create_run(name="r", model_spec="m", model_fingerprint="f", backend={"kind": "http"},
                               tokenizer_fingerprint="t", version="0", command="ctxprobe run", settings={})
        page = build_report(run, cells())
    assert "relative threshold rule (NoLiMa)" in page and "own mean score at the shortest tested" in page
    assert "4K (85% of 60% = 51%)" in page


def test_coherent_and_shuffled_haystacks_hold_the_same_sentences():
    tok = ByteTokenizer()
    coherent, shuffled = load_haystack("coherent", 3, tok), load_haystack("shuffled", 3, tok)
    assert Counter(coherent.pool.texts.tolist()) == Counter(shuffled.pool.texts.tolist())
    n = 4000
    a, b = coherent.order(3, 0, n), shuffled.order(3, 0, n)
    assert np.all(np.diff(a) % len(coherent.pool) == 1)          # read in order, scene after scene
    assert np.mean(np.diff(b) == 1) < 0.01                          # the same sentences, shuffled
    texts = coherent.pool.texts
    scene = [texts[i] for i in a[: 2 * 8]]
    # Within a scene a name comes back: the second sentence refers to the first one's person.
    assert sum(any(w in scene[k + 1] for w in scene[k].split() if w.istitle() and len(w) > 3)
               for k in range(len(scene) - 1)) >= 6
    for spec in ("coherent", "shuffled"):
        p = make_probe("nolima", 3000, 50, haystack=spec, seed=3)
        assert p.haystack == spec and len(p.token_ids) == 3000
        assert make_probe("niah", 3000, 50, haystack=spec, seed=3).hash != \
            make_probe("niah", 3000, 50, haystack=None, seed=3).hash
