"""`ctxprobe report`: one self-contained, escaped HTML file per run."""

import re
from html.parser import HTMLParser

from ctxprobe.cli import main
from ctxprobe.analysis.effective_length import effective_lengths
from ctxprobe.analysis.summary import usable
from ctxprobe.analysis.report import build_report, effective_rows
from ctxprobe.store import Store

LENGTHS = (1024, 2048, 4096)
SCRIPT = "<script>alert('pwned')</script>"


def make_store(path):
    store = Store(path)
    run = store.create_run(name="r1", model_spec="openai:http://127.0.0.1:8000/v1",
                           model_fingerprint="fp-123", backend={"kind": "native"},
                           tokenizer_fingerprint="tok-9", version="0.1.0",
                           command="ctxprobe run --model tiny <b>")
    for family in ("niah", "vt"):
        for length in LENGTHS:
            for depth in (0.0, 50.0):
                for sample in range(2):
                    ok = length < 4096 or sample == 0
                    store.put_cell(run.id, dict(
                        family=family, length=length, depth=depth, sample=sample, seed=0,
                        probe_hash=f"{family}-{length}-{depth}-{sample}", score=float(ok),
                        exact=ok, logprob=-0.1 if ok else -3.0, first_rank=1 if ok else 4,
                        response=" 1234567" if ok else SCRIPT + " the number is 42"))
    store.put_cell(run.id, dict(family="niah", length=1024, depth=100.0, sample=0, seed=0,
                                probe_hash="x", error="<img src=x onerror=alert(1)> timeout"))
    store.close()
    return path


def test_report_is_self_contained_and_escaped(tmp_path, runner):
    db = make_store(tmp_path / "r.db")
    out = tmp_path / "report.html"
    result = runner.invoke(main, ["report", "r1", "--db", str(db), "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "<script" not in page.lower()                        # the response is escaped ...
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page  # ... and shown
    assert "&lt;img src=x onerror=alert(1)&gt; timeout" in page    # errors are escaped too
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "openai:http://127.0.0.1:8000/v1" in page          # shown as text, never fetched
    # A grid, then per family: heatmap, fall-off and log-prob heatmap; all inline PNGs.
    images = re.findall(r'<img src="([^"]{0,30})', page)
    assert len(images) == 1 + 2 * 3 and all(s.startswith("data:image/png;base64,") for s in images)
    assert _unbalanced_tags(page) == []
    assert re.findall(r'href="([^"]*)"', page) == ["#family-niah", "#family-vt"]  # same-page only
    for text in ("fp-123", "tok-9", "ctxprobe run --model tiny &lt;b&gt;", "Effective context length",
                 "Failing examples", "Errored cells (1)", "threshold rule"):
        assert text in page


def _unbalanced_tags(page):
    """Tags opened and not closed (or closed and not opened), ignoring void elements."""
    void = {"meta", "img", "br", "hr", "link", "input"}

    class Checker(HTMLParser):
        def __init__(self):
            super().__init__()
            self.stack, self.bad = [], []

        def handle_starttag(self, tag, attrs):
            if tag not in void:
                self.stack.append(tag)

        def handle_endtag(self, tag):
            if self.stack and self.stack[-1] == tag:
                self.stack.pop()
            else:
                self.bad.append(tag)

    checker = Checker()
    checker.feed(page)
    return checker.bad + checker.stack


def test_report_effective_length_table(tmp_path):
    db = make_store(tmp_path / "r.db")
    with Store(db, readonly=True) as store:
        cells = store.cells(store.get_run("r1").id)
    scored = usable(cells)
    # Both families score 100% at 1K and 2K and 50% at 4K: the threshold rule says 2K.
    rows = effective_rows(effective_lengths(scored), scored)
    assert [r[:5] for r in rows] == [["niah", 12, "83.3%", "85%", "2K"], ["vt", 12, "83.3%", "85%", "2K"]]
    assert rows[0][5].startswith(">4K [")  # the fit still stands above 50% at 4K
    assert rows[0][6].startswith(("2.", "3.")) and "[" in rows[0][6]  # L85 between 2K and 4K
    relative = effective_rows(effective_lengths(scored, relative=True), scored)
    assert relative[0][3] == "85% (relative)"


def test_report_of_a_run_without_scored_cells(tmp_path):
    store = Store(tmp_path / "e.db")
    run = store.create_run(name="empty", model_spec="m", model_fingerprint="f", backend={},
                           tokenizer_fingerprint="t", version="0.1.0", command="c")
    page = build_report(run, [])
    assert "no scored cells" in page and "<img" not in page


def test_report_bad_input_exits_2(tmp_path, runner):
    db = make_store(tmp_path / "r.db")
    result = runner.invoke(main, ["report", "nope", "--db", str(db), "-o", str(tmp_path / "x.html")])
    assert result.exit_code == 2 and "no run named 'nope'" in result.output and "r1" in result.output
    result = runner.invoke(main, ["report", "r1", "--db", str(tmp_path / "missing.db")])
    assert result.exit_code == 2 and "no results database" in result.output
