"""The multi-run report (issue 16 item 1): `ctxprobe report RUN RUN ...` on one self-contained page
that fetches nothing, escapes every name, hides machine paths unless asked, and marks the run
that regressed against the reference. (A headless-browser screenshot is a manual check: see
docs/serving.md.)"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from ctxprobe.cli import main
from ctxprobe.store import Store

LENGTHS = [1024, 2048, 4096, 8192]
DEPTHS = [0.0, 50.0, 100.0]
SAMPLES = 4
EVIL = '<script>alert("b")</script> & co'


def _cells(fails_from: int, *, ttft: bool) -> list[dict]:
    out = []
    for n in LENGTHS:
        for d in DEPTHS:
            for s in range(SAMPLES):
                ok = n < fails_from
                out.append({"family": "niah", "length": n, "depth": d, "sample": s, "seed": 0,
                            "probe_hash": f"h{n}-{d}-{s}", "answers": ["1234567"],
                            "response": "1234567" if ok else "<b>no</b>", "score": float(ok),
                            "strict": float(ok), "lenient": float(ok), "prompt_tokens": n,
                            "latency": n / 1000, "ttft": n / 4000 if ttft else None,
                            "decode_rate": 50.0 if ttft else None})
    return out


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "runs.db"
    runs = [("native reference", "/home/alice/models/tiny-llama",
             {"kind": "native", "path": "/home/alice/models/tiny-llama", "dtype": "float32", "device": "cpu"},
             8192, False),
            (EVIL, "openai:http://127.0.0.1:8000/v1",
             {"kind": "http", "base_url": "http://127.0.0.1:8000/v1", "api": "completions",
              "served_model": "tiny", "stream": True, "tokenizer": "/home/alice/models/tiny-llama"},
             8192, True),
            ("degraded-q4", "openai:http://127.0.0.1:8001/v1",
             {"kind": "http", "base_url": "http://127.0.0.1:8001/v1", "api": "chat", "served_model": "tiny-q4"},
             4096, False)]
    with Store(path) as store:
        for name, model, backend, fails_from, ttft in runs:
            run = store.create_run(name=name, model_spec=model, model_fingerprint="f", backend=backend,
                                   tokenizer_fingerprint="t", version="0", command="ctxprobe run ...",
                                   settings={"seed": 0})
            for cell in _cells(fails_from, ttft=ttft):
                store.put_cell(run.id, cell)
    return path


class _Attributes(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for key, value in attrs:
            if key in ("src", "href", "srcset", "action", "poster", "data", "formaction", "background"):
                self.urls.append((tag, key, value or ""))


def _page(runner, db, tmp_path, *args) -> str:
    out = tmp_path / "page.html"
    result = runner.invoke(main, ["report", *args, "--db", str(db), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out.read_text()


def test_three_runs_on_one_page_fetching_nothing(runner, db, tmp_path):
    page = _page(runner, db, tmp_path, "native reference", EVIL, "degraded-q4", "--reference", "native reference")
    parsed = _Attributes()
    parsed.feed(page)
    # Nothing to fetch: images are data: URIs, links are anchors on the page, no scripts or styles from elsewhere.
    assert parsed.urls and all(value.startswith("data:image/png;base64,") for tag, key, value in parsed.urls
                               if key == "src")
    assert all(value.startswith("#") for tag, key, value in parsed.urls if key != "src")
    assert not parsed.tags & {"script", "link", "iframe", "object", "embed", "base"}
    assert not re.search(r"url\(|@import", page)
    # Every name is text: the run named like a script shows escaped, never as markup.
    assert '<script>alert("b")</script>' not in page
    assert "&lt;script&gt;alert(&quot;b&quot;)&lt;/script&gt; &amp; co" in page
    assert "<b>no</b>" not in page
    # One row per run; the settings that differ; one heatmap grid and one fall-off per family.
    assert page.count("<img") >= 4
    assert "backend.kind" in page and "backend.served_model" in page
    assert "time to first token by length" in page
    # The degraded run regressed at 4K against the reference; the streamed one did not.
    sections = page.split("<h3>")
    evil_part = next(s for s in sections if s.startswith("&lt;script&gt;"))
    degraded_part = next(s for s in sections if s.startswith("degraded-q4"))
    assert "REGRESSED" not in evil_part and "no regression" in evil_part
    assert degraded_part.count("REGRESSED") == 1 and "4K" in degraded_part


def test_machine_paths_only_when_asked(runner, db, tmp_path):
    page = _page(runner, db, tmp_path, "native reference", "degraded-q4")
    assert "/home/alice" not in page and "…/tiny-llama" in page
    shown = _page(runner, db, tmp_path, "native reference", "degraded-q4", "--show-paths")
    assert "/home/alice/models/tiny-llama" in shown


def test_runs_chosen_by_pattern_and_reference_first(runner, db, tmp_path):
    out = tmp_path / "p.html"
    result = runner.invoke(main, ["report", "--name", "degraded*", "--model", "/home/*",
                                  "--reference", "degraded-q4", "--db", str(db), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 runs" in result.output and "reference degraded-q4" in result.output
    page = out.read_text()
    assert "native reference vs degraded-q4" in page
    missing = runner.invoke(main, ["report", "--name", "nothing-*", "--db", str(db), "-o", str(out)])
    assert missing.exit_code == 2 and missing.output.startswith("error: no run in")
