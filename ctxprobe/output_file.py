"""Output files written whole or not at all: a temporary file beside the target, renamed onto it
only when everything is written. A command that fails halfway (a full disk, a damaged database,
Ctrl-C) never leaves a partial file and never clobbers the one there before; a reader never sees
half of one. `probes export`, `export`, `report` and `baseline` write through here.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import IO, Iterator

from ctxprobe.errors import UserError


@contextlib.contextmanager
def output_file(path: str | os.PathLike, *, newline: str | None = None,
                option: str = "-o") -> Iterator[IO[str]]:
    """A text file to write `path` through: stdout for '-'; a device or FIFO (/dev/null) is
    written straight; else a hidden temporary file in the same directory (so the rename is
    atomic), renamed onto `path` when the block ends without an exception. An OSError while
    writing becomes a UserError naming `path`; the earlier file, if any, is left as it was."""
    if str(path) == "-":
        yield sys.stdout
        return
    target = Path(os.path.realpath(path))    # through a symlink, to the file it names
    if target.exists() and not target.is_file():
        with open(target, "w", encoding="utf-8", newline=newline) as f:
            yield f
        return
    if not target.parent.is_dir():
        raise UserError(f"cannot write {path}: directory {target.parent} does not exist; "
                        f"create it or pass another {option}")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        try:
            f = open(tmp, "w", encoding="utf-8", newline=newline)
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror or e}; pass another {option}") from None
        try:
            yield f
            f.flush()
            os.fsync(f.fileno())               # the bytes are on disk before the name points at them
            f.close()
            os.replace(tmp, target)
        except OSError as e:
            if e.filename not in (None, str(tmp)):
                raise                          # about another file the caller read: not ours to reword
            raise _unwritten(path, e) from None
        finally:
            with contextlib.suppress(OSError):
                f.close()
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _unwritten(path, e: OSError) -> UserError:
    return UserError(f"cannot write {path}: {e.strerror or e}; nothing was written there "
                     "(an earlier file of that name is unchanged)")
