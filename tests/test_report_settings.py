"""The report's backend and settings (issue 19 item 7): readable rows, one setting each, and no
machine paths unless --show-paths."""

import html as html_lib

from ctxprobe.builtin import MODEL_DIR
from ctxprobe.cli import main


def test_the_report_shows_settings_as_rows_without_machine_paths(runner, tmp_path):
    db = str(tmp_path / "r.db")
    done = runner.invoke(main, ["run", "--model", "builtin", "--probe", "niah", "--lengths", "512",
                                "--depths", "50", "--db", db, "--name", "r", "--quiet"])
    assert done.exit_code == 0, done.output
    out = tmp_path / "report.html"
    assert runner.invoke(main, ["report", "r", "--db", db, "-o", str(out)]).exit_code == 0
    page = html_lib.unescape(out.read_text())
    assert str(MODEL_DIR) not in page and "…/model" in page
    assert '{"' not in page                           # no JSON objects for a reader to parse
    for setting, value in [("backend.dtype", "float32"), ("backend.kind", "native"), ("sweep.seed", "0")]:
        assert f"<td>{setting}</td><td>{value}</td>" in page, setting
    shown = tmp_path / "paths.html"
    assert runner.invoke(main, ["report", "r", "--db", db, "-o", str(shown), "--show-paths"]).exit_code == 0
    assert str(MODEL_DIR) in html_lib.unescape(shown.read_text())
