"""Every CLI command is documented: its help ends with an Example, and the README shows it."""

import re
from pathlib import Path

import click
import pytest

from ctxprobe.cli import main

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _commands(group: click.Group, prefix=()):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


COMMANDS = list(_commands(main))


def test_the_cli_has_the_commands_the_issues_name():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"probes list", "probes show", "probes export", "run", "runs", "export", "merge", "inspect",
            "bench", "report", "compare", "baseline", "history", "demo"} <= names


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_command_help_ends_with_an_example_and_the_readme_shows_it(path, cmd):
    help_text = (cmd.help or "").strip()
    assert help_text.splitlines()[-1].strip().startswith("Example: ctxprobe " + " ".join(path))
    assert "ctxprobe " + " ".join(path) in README


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's `ctxprobe.run` block, executed as it stands (in a scratch directory: it
    writes ./ctxprobe.db), sweeps its 2 cells on the built-in model and prints the table."""
    [block] = [b for b in _python_blocks(README) if "ctxprobe.run(" in b]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "niah: score (%) by depth and length" in out and "niah: effective length" in out
    name, finished, cells = out.strip().splitlines()[-1].split()
    assert (int(finished), int(cells)) == (2, 2) and name.startswith("builtin-")
    from ctxprobe.store import Store

    with Store(tmp_path / "ctxprobe.db", readonly=True) as store:
        assert store.cell_counts(store.get_run(name).id) == (2, 0)
