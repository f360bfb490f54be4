"""Files that hold patient data: 0600 files in 0700 directories (security issue 15, item 6; L4).

The database, the spool, rejected rows and every batch output carry PHI (patient references,
orders as written, evidence values; Synthea file names are patient names). Nothing here depends
on the caller's umask: directories are made 0700 and files created 0600, and the commands that
write such files (``serve``, ``screen``, ``users``) also run under umask 077 for whatever a
library creates on its own (SQLite's ``-wal``/``-shm`` files follow the database file's mode).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "private_dir",
    "private_file",
    "private_open",
    "private_umask",
    "restrict_umask",
]

FILE_MODE = 0o600
DIR_MODE = 0o700


def restrict_umask() -> int:
    """umask 077 for the rest of the process (``serve``); returns the previous umask."""
    return os.umask(0o077)


@contextmanager
def private_umask() -> Iterator[None]:
    """Run a block under umask 077 (new files 0600, new directories 0700), then restore it."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) as 0700; a directory of ours that exists is narrowed to 0700."""
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_uid == os.getuid() and stat.S_IMODE(path.stat().st_mode) != DIR_MODE:
        path.chmod(DIR_MODE)
    return path


def private_file(path: str | Path) -> Path:
    """Narrow an existing file of ours to 0600 (after a library wrote it)."""
    path = Path(path)
    if path.exists() and path.stat().st_uid == os.getuid():
        path.chmod(FILE_MODE)
    return path


def private_open(path: str | Path, mode: str = "a", **kwargs: Any) -> IO[Any]:
    """``open`` that creates the file 0600 (an existing one is narrowed to 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    if "r" in mode or "+" in mode:
        raise ValueError("private_open is for writing")
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise
