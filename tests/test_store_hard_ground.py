"""Results databases on hard ground: read-only directories and mounts, a lock held past the busy
timeout, a full disk, a damaged page, a missing table, rows that do not decode. Each fault gives
one line naming the file (and the run or cell where known) and exit 2; nothing stored is lost;
the sweep resumes once the fault is gone. Outputs (`report`, `baseline`, `export -o`) are
written whole or not at all.

Every command runs as a real process on real SQLite files. Read-only mounts and small disks are
made with `unshare -m` + `mount` (root with CAP_SYS_ADMIN, the mounts private to the command);
tests that need them skip elsewhere, except that a non-root user gets a read-only directory from
chmod."""

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI, answers_for
from scripted_server import ScriptedServer

from ctxprobe.store import Store

ROOT = Path(__file__).resolve().parents[1]
RUN = dict(model_spec="openai:http://127.0.0.1:1/v1", model_fingerprint="server-model:m",
           backend={"kind": "http"}, tokenizer_fingerprint="byte-utf8-v1", version="0.1.0",
           command="ctxprobe run", settings={"seed": 0})


def env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": "", "PYTHONDONTWRITEBYTECODE": "1",
            **extra}


def ctxprobe(*args, prefix=(), cwd=None, **extra_env):
    return subprocess.run([*prefix, sys.executable, "-m", "ctxprobe", *map(str, args)],
                          env=env(**extra_env), cwd=cwd, capture_output=True, text=True, timeout=300)


def one_line_error(result, *needles):
    """The command failed with exit 2 and one line on stderr that holds every needle."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def make_db(path, *, samples=2, lengths=(64, 128)):
    """A closed WAL database with run 'r' of len(lengths) x 3 depths x samples clean cells."""
    with Store(path) as store:
        run = store.create_run(name="r", **RUN)
        for length in lengths:
            for depth in (0.0, 50.0, 100.0):
                for sample in range(samples):
                    store.put_cell(run.id, dict(
                        family="niah", length=length, depth=depth, sample=sample, seed=0,
                        probe_hash=f"{length}-{depth}-{sample}", answers=["123"], score=1.0,
                        strict=1.0, lenient=1.0, response=" 123" + "x" * 200,
                        prompt_tokens=length, latency=0.01))
    return path


def digest(*paths):
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() if Path(p).exists() else None
            for p in paths]


def cell_count(db):
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT COUNT(*) FROM cells WHERE error IS NULL").fetchone()[0]


# -- read-only directories and mounts ------------------------------------------------------

MOUNT_RO = 'mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" && shift 2 && exec "$@"'
MOUNT_TMPFS = 'mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@"'


def _can(script, *args) -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *args],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture
def readonly_dir(tmp_path):
    """(folder to fill, folder to read it through: read-only, prefix to run a command with)."""
    src, view = tmp_path / "data", tmp_path / "view"
    src.mkdir()
    view.mkdir()
    if os.geteuid() != 0:
        yield src, src, ()
        os.chmod(src, 0o755)
        return
    if not _can(MOUNT_RO, src, view, "sh", "-c", f'! touch "{view}/probe" 2>/dev/null'):
        pytest.skip("needs `unshare -m` and `mount --bind -o ro` (root with CAP_SYS_ADMIN)")
    yield src, view, ("unshare", "-m", "sh", "-c", MOUNT_RO, "sh", src, view)


def seal(src):
    """For a non-root user, make the folder read-only (root reads it through a read-only mount)."""
    if os.geteuid() != 0:
        for p in src.iterdir():
            os.chmod(p, 0o444)
        os.chmod(src, 0o555)


def test_read_only_commands_read_a_database_on_a_read_only_mount(readonly_dir, tmp_path):
    src, view, prefix = readonly_dir
    make_db(src / "r.db")
    seal(src)
    db, before = view / "r.db", digest(src / "r.db")
    out = tmp_path / "out"
    out.mkdir()
    commands = {
        "runs": ["runs", "--db", db],
        "report": ["report", "r", "--db", db, "-o", out / "report.html"],
        "export": ["export", "r", "--db", db, "--format", "jsonl", "-o", out / "cells.jsonl"],
        "export-stdout": ["export", "r", "--db", db],
        "baseline": ["baseline", "r", "--db", db, "-o", out / "base.json"],
        "compare": ["compare", "r", "r", "--db", db],
        "history": ["history", "--db", db],
        "merge": ["merge", out / "merged.db", db],
    }
    for what, args in commands.items():
        result = ctxprobe(*args, prefix=prefix)
        assert result.returncode == 0, (what, result.stderr)
        assert sorted(os.listdir(src)) == ["r.db"], what     # no -wal or -shm made, nothing written
        assert digest(src / "r.db") == before, what
    assert len((out / "cells.jsonl").read_text().splitlines()) == 12
    assert cell_count(out / "merged.db") == 12


def wal_pair(folder, *, with_shm):
    """A database whose last cells are only in its -wal file, as a live (or killed) writer leaves
    it, copied into `folder` with its -wal (and -shm) file."""
    live = folder.parent / "live"
    live.mkdir()
    make_db(live / "r.db")
    conn = sqlite3.connect(live / "r.db", isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("UPDATE cells SET response = 'only in the wal' WHERE sample = 1")
    names = ["r.db", "r.db-wal"] + (["r.db-shm"] if with_shm else [])
    for name in names:
        shutil.copy(live / name, folder / name)
    conn.close()
    return names


def test_a_wal_file_with_writes_is_read_when_its_shm_is_there(readonly_dir, tmp_path):
    src, view, prefix = readonly_dir
    names = wal_pair(src, with_shm=True)
    seal(src)
    result = ctxprobe("export", "r", "--db", view / "r.db", "--format", "jsonl", prefix=prefix)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("only in the wal") == 6        # the -wal's writes are read
    assert sorted(os.listdir(src)) == sorted(names)


def test_a_wal_file_that_cannot_be_read_is_named_never_skipped(readonly_dir):
    # Without a -shm file (and no way to make one) SQLite could read the database file only,
    # missing what the -wal holds: refuse, naming the files, rather than report stale cells.
    src, view, prefix = readonly_dir
    wal_pair(src, with_shm=False)
    seal(src)
    for args in (["runs"], ["export", "r"], ["report", "r", "-o", "/dev/null"]):
        result = ctxprobe(*args, "--db", view / "r.db", prefix=prefix)
        one_line_error(result, view / "r.db", "r.db-wal", "writable directory")
    assert sorted(os.listdir(src)) == ["r.db", "r.db-wal"]


# -- a lock held longer than the busy timeout ------------------------------------------------

GRID = dict(families=["niah"], lengths=[512, 576], depths=[0, 50, 100], samples=2)


def sweep(url, db, lengths="512,576"):
    return ["run", "--model", f"openai:{url}", "--probe", "niah", "--lengths", lengths,
            "--depths", "0,50,100", "--samples", "2", "--db", db, "--quiet", "--tokenizer", "byte",
            "--name", "sweep"]


HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()          # until the test closes our stdin
conn.execute("ROLLBACK")
"""


def test_a_lock_held_past_the_busy_timeout_stops_the_sweep_in_one_line(tmp_path):
    db = tmp_path / "r.db"
    with FakeOpenAI(answers_for(**GRID)) as fake:
        first = ctxprobe(*sweep(fake.url, db, "512"), cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert cell_count(db) == 6
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "locked"
            listed = ctxprobe("runs", "--db", db)                    # readers are not blocked
            assert listed.returncode == 0 and "sweep" in listed.stdout, listed.stderr
            blocked = ctxprobe(*sweep(fake.url, db), cwd=tmp_path, CTXPROBE_DB_TIMEOUT="0.5")
            # The sweep's first write is the record of this invocation, before any cell.
            line = one_line_error(blocked, db, "locked by another process", "invocation of run 'sweep'",
                                  "CTXPROBE_DB_TIMEOUT")
            assert "Traceback" not in blocked.stderr, line
        finally:
            holder.stdin.close()
            holder.wait(timeout=60)
        assert cell_count(db) == 6                                   # nothing stored was lost
        resumed = ctxprobe(*sweep(fake.url, db), cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert "6 already stored" in resumed.stdout
    assert cell_count(db) == 12


def test_a_bad_busy_timeout_is_refused(tmp_path):
    make_db(tmp_path / "r.db")
    one_line_error(ctxprobe("runs", "--db", tmp_path / "r.db", CTXPROBE_DB_TIMEOUT="soon"),
                   "CTXPROBE_DB_TIMEOUT")


# -- a full disk -----------------------------------------------------------------------------

FILL = """
import os, sys
folder, leave = sys.argv[1], int(sys.argv[2])
with open(os.path.join(folder, "reserve"), "wb") as f:
    f.write(b"r" * leave)
with open(os.path.join(folder, "filler"), "wb", buffering=0) as f:
    try:
        while True:
            f.write(b"x" * 4096)
    except OSError:
        pass
os.remove(os.path.join(folder, "reserve"))
"""


@pytest.fixture
def small_disk(tmp_path):
    """An empty folder where on_small_disk() mounts a private tmpfs."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _can(MOUNT_TMPFS, "64k", disk, "true"):
        pytest.skip("needs `unshare -m` and a tmpfs mount (root with CAP_SYS_ADMIN)")
    return disk


def on_small_disk(disk, script, **extra_env):
    """Run a shell `script` (with $PY = this python) inside a private 4 MiB tmpfs at `disk`;
    the script copies out what the test checks. Returns the finished process."""
    body = f'mount -t tmpfs -o size=4m tmpfs "{disk}" && cd "{disk}" && {script}'
    return subprocess.run(["unshare", "-m", "sh", "-c", body], env=env(PY=sys.executable, **extra_env),
                          capture_output=True, text=True, timeout=600)


def test_a_full_disk_stops_the_sweep_in_one_line_and_it_resumes(small_disk, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    fill = tmp_path / "fill.py"
    fill.write_text(FILL)
    grid = dict(GRID, lengths=[512, 576, 640, 704])
    with FakeOpenAI(answers_for(**grid)) as fake:
        db = small_disk / "r.db"
        run = " ".join(f"'{a}'" for a in sweep(fake.url, db, "512"))
        run_all = " ".join(f"'{a}'" for a in sweep(fake.url, db, "512,576,640,704"))
        script = (
            f'"$PY" -m ctxprobe {run} > "{out}/o1" 2> "{out}/e1"; echo $? > "{out}/rc1"; '
            f'"$PY" "{fill}" . 131072; '                     # leave 128 KiB: room to open, not to finish
            f'"$PY" -m ctxprobe {run_all} > "{out}/o2" 2> "{out}/e2"; echo $? > "{out}/rc2"; '
            f'cp r.db "{out}/after-full.db"; [ -f r.db-wal ] && cp r.db-wal "{out}/after-full.db-wal"; '
            f'rm filler; '
            f'"$PY" -m ctxprobe {run_all} > "{out}/o3" 2> "{out}/e3"; echo $? > "{out}/rc3"; '
            f'cp r.db "{out}/final.db"')
        done = on_small_disk(small_disk, script)
    assert done.returncode == 0, done.stderr
    read = lambda name: (out / name).read_text()  # noqa: E731
    assert read("rc1").strip() == "0", read("e1")
    assert read("rc2").strip() == "2", (read("o2"), read("e2"))
    lines = read("e2").strip().splitlines()
    assert len(lines) == 1 and "the disk is full" in lines[0] and str(db) in lines[0], lines
    stored = cell_count(out / "after-full.db")
    assert 6 <= stored < 24                                   # the first run's cells are all there
    assert read("rc3").strip() == "0", read("e3")
    assert f"{stored} already stored" in read("o3")
    with Store(out / "final.db", readonly=True) as store:
        [run_] = store.runs()
        cells = store.cells(run_.id)
    assert len(cells) == 24 and all(c["error"] is None and c["score"] == 1.0 for c in cells)


def test_outputs_on_a_full_disk_keep_the_old_file_and_leave_no_temporary(small_disk, tmp_path):
    db = make_db(tmp_path / "r.db")
    out = tmp_path / "out"
    out.mkdir()
    fill = tmp_path / "fill.py"
    fill.write_text(FILL)
    writes = {"report.html": ["report", "r", "--db", db, "-o", "report.html"],
              "base.json": ["baseline", "r", "--db", db, "-o", "base.json"],
              "cells.csv": ["export", "r", "--db", db, "-o", "cells.csv"]}
    script = " ".join(f'echo old > {name};' for name in writes) + f' "$PY" "{fill}" . 0; '
    for i, (name, args) in enumerate(writes.items()):
        words = " ".join(f"'{a}'" for a in args)
        script += f'"$PY" -m ctxprobe {words} 2> "{out}/e{i}"; echo $? > "{out}/rc{i}"; '
    script += f'ls -A > "{out}/listing"; cat {" ".join(writes)} > "{out}/contents"'
    done = on_small_disk(small_disk, script)
    assert done.returncode == 0, done.stderr
    for i, name in enumerate(writes):
        err = (out / f"e{i}").read_text().strip().splitlines()
        assert (out / f"rc{i}").read_text().strip() == "2", (name, err)
        assert len(err) == 1 and f"cannot write {name}" in err[0], err
    assert (out / "contents").read_text() == "old\n" * 3      # the earlier files are untouched
    assert sorted((out / "listing").read_text().split()) == sorted([*writes, "filler"])


def test_a_database_on_a_full_disk_is_read_and_a_writer_is_told(small_disk, tmp_path):
    # With no byte left SQLite cannot size the -shm file beside a closed WAL database: readers
    # read without one (nothing else can be writing); a writer gets one line.
    make_db(tmp_path / "r.db")
    out = tmp_path / "out"
    out.mkdir()
    fill = tmp_path / "fill.py"
    fill.write_text(FILL)
    script = (f'cp "{tmp_path}/r.db" r.db && "$PY" "{fill}" . 0 && '
              f'"$PY" -m ctxprobe runs --db r.db > "{out}/o1" 2> "{out}/e1"; echo $? > "{out}/rc1"; '
              f'"$PY" -m ctxprobe export r --db r.db > "{out}/o2" 2> "{out}/e2"; echo $? > "{out}/rc2"; '
              f'"$PY" -m ctxprobe merge r.db r.db > "{out}/o3" 2> "{out}/e3"; echo $? > "{out}/rc3"; '
              f'cp r.db "{out}/after.db"')
    done = on_small_disk(small_disk, script)
    assert done.returncode == 0, done.stderr
    read = lambda name: (out / name).read_text()  # noqa: E731
    assert read("rc1").strip() == "0" and " 12 " in read("o1"), read("e1")
    assert read("rc2").strip() == "0" and len(read("o2").splitlines()) == 13, read("e2")
    assert read("rc3").strip() == "2", read("o3")
    lines = read("e3").strip().splitlines()
    assert len(lines) == 1 and "the disk is full" in lines[0] and "r.db" in lines[0], lines
    assert digest(out / "after.db") == digest(tmp_path / "r.db")


def test_output_file_keeps_the_old_file_when_writing_fails(tmp_path):
    from ctxprobe.output_file import output_file

    target = tmp_path / "report.html"
    target.write_text("old report")
    with pytest.raises(RuntimeError):
        with output_file(target) as f:
            f.write("half of a new report")
            raise RuntimeError("the build failed midway")
    assert target.read_text() == "old report"
    assert os.listdir(tmp_path) == ["report.html"]
    with output_file(target) as f:
        f.write("new report")
    assert target.read_text() == "new report" and os.listdir(tmp_path) == ["report.html"]


# -- damaged files: a malformed page, a missing table, rows that do not decode -------------------

def readers(run="r"):
    """Every read-only command, on run `run`."""
    return {"runs": ["runs"], "export": ["export", run], "report": ["report", run, "-o", "report.html"],
            "baseline": ["baseline", run, "-o", "base.json"], "compare": ["compare", run, run],
            "history": ["history"]}


def corrupt_cells_page(db):
    """Overwrite the header of the cells table's root page with bytes no b-tree page has."""
    with sqlite3.connect(db) as conn:
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'cells'").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * 16)


def assert_every_reader_fails_in_one_line(db, tmp_path, *needles, run="r"):
    before = digest(db)
    for what, args in readers(run).items():
        result = ctxprobe(*args, "--db", db, cwd=tmp_path)
        one_line_error(result, db, *needles)
        assert "Traceback" not in result.stderr, what
        assert digest(db) == before, what                     # nothing written to it
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "base.json").exists()


def test_a_malformed_page_is_one_line_and_the_sweep_resumes_from_a_copy(tmp_path):
    db = tmp_path / "r.db"
    with FakeOpenAI(answers_for(**GRID)) as fake:
        assert ctxprobe(*sweep(fake.url, db, "512"), cwd=tmp_path).returncode == 0
        shutil.copy(db, tmp_path / "backup.db")
        corrupt_cells_page(db)
        assert_every_reader_fails_in_one_line(db, tmp_path, "is damaged", "malformed", run="sweep")
        before = digest(db)
        broken = ctxprobe(*sweep(fake.url, db), cwd=tmp_path)
        one_line_error(broken, db, "is damaged", "run 'sweep'")
        assert digest(db) == before                           # the sweep wrote nothing to it
        shutil.copy(tmp_path / "backup.db", db)                # the fault cleared
        resumed = ctxprobe(*sweep(fake.url, db), cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert "6 already stored" in resumed.stdout
    assert cell_count(db) == 12


def test_a_missing_table_is_one_line(tmp_path):
    db = make_db(tmp_path / "r.db")
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE cells")
    conn.close()
    assert_every_reader_fails_in_one_line(db, tmp_path, "has no cells table")
    with FakeOpenAI(answers_for(**GRID)) as fake:
        one_line_error(ctxprobe(*sweep(fake.url, db), cwd=tmp_path), db, "has no cells table")


def test_undecodable_run_json_names_the_file_and_run(tmp_path):
    db = make_db(tmp_path / "r.db")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE runs SET settings = '{not json' WHERE name = 'r'")
    conn.close()
    assert_every_reader_fails_in_one_line(db, tmp_path, "run 'r'", "settings JSON")


def test_undecodable_cell_json_names_the_file_run_and_cell(tmp_path):
    db = make_db(tmp_path / "r.db")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE cells SET answers = '[\"12' WHERE length = 128 AND depth = 50 AND sample = 1")
    conn.close()
    before = digest(db)
    for args in (["export", "r"], ["report", "r", "-o", "report.html"], ["baseline", "r", "-o", "b.json"]):
        result = ctxprobe(*args, "--db", db, cwd=tmp_path)
        one_line_error(result, db, "run 'r'", "cell niah length 128 depth 50% sample 1", "answers JSON")
    assert digest(db) == before


def test_text_that_is_not_utf8_is_one_line(tmp_path):
    db = make_db(tmp_path / "r.db")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE cells SET response = CAST(x'ff20fe' AS TEXT) WHERE sample = 0")
    conn.close()
    for args in (["export", "r"], ["report", "r", "-o", "report.html"]):
        one_line_error(ctxprobe(*args, "--db", db, cwd=tmp_path), db, "run 'r'", "UTF-8")


def test_a_response_with_a_lone_surrogate_is_stored_and_the_sweep_finishes(tmp_path):
    # JSON may escape half of a UTF-16 pair; SQLite cannot store that character. It used to stop
    # the sweep, on every rerun; now the raw text is scored and the stored text has U+FFFD.
    db = tmp_path / "r.db"
    reply = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "no \\ud800 idea"}}]}'
    with ScriptedServer(200, reply) as server:
        result = ctxprobe(*sweep(server.url, db, "512"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with Store(db, readonly=True) as store:
        cells = store.cells(store.get_run("sweep").id)
    assert len(cells) == 6
    assert all(c["response"] == "no \ufffd idea" and c["error"] is None for c in cells)
