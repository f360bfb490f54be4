"""A local append-only spool for writes the database could not take (it was down or locked).

Advice must not stop because the database is away: the hook's evaluation goes to a JSON-lines
file instead (one line per write, flushed and fsync'ed before the hook answers), and a drainer
replays the lines once the database is back. Replays are idempotent (evaluation ids, feedback
ids), so a crash half-way through a drain loses nothing and duplicates nothing.

Each process writes its own ``spool-<instance>.jsonl`` and holds an exclusive ``flock`` on it;
a file whose lock can be taken belongs to a dead process and is drained by whoever finds it.
Lines that can never be applied (invalid data) go to ``rejected.jsonl`` with the error, so one
bad line does not block the rest.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

from cds_engine.files import private_dir, private_open
from cds_engine.store.failures import count_not_stored

__all__ = ["Spool", "SpoolEntry", "TransientError"]

log = logging.getLogger("cds_engine.store.spool")

SpoolEntry = dict[str, Any]


class TransientError(Exception):
    """The database is away: stop draining and keep the line for later."""


def _lock(handle: IO[Any], *, blocking: bool) -> bool:
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


class Spool:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.instance = uuid.uuid4().hex[:12]
        self._lock = threading.Lock()
        self._handle: IO[str] | None = None
        self._rotation = 0

    @property
    def own_path(self) -> Path:
        return self.directory / f"spool-{self.instance}.jsonl"

    def append(self, entry: SpoolEntry) -> None:
        """Write one line durably (fsync) before returning."""
        line = json.dumps(entry, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            if self._handle is None:
                private_dir(self.directory)  # evaluations wait here: 0600 files in a 0700 directory
                self._handle = private_open(self.own_path, "a", encoding="utf-8")
                _lock(self._handle, blocking=True)
            self._handle.write(line)
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def pending(self) -> bool:
        """Is anything waiting (ours or left by a dead process)?"""
        if self._handle is not None:
            return True
        if not self.directory.is_dir():
            return False
        return any(self.directory.glob("spool-*.jsonl")) or any(self.directory.glob("drain-*.jsonl"))

    def _take_own(self) -> None:
        """Move our live file aside so new writes start a fresh one while we drain."""
        with self._lock:
            if self._handle is None:
                return
            self._rotation += 1
            target = self.directory / f"drain-{self.instance}-{self._rotation}.jsonl"
            os.replace(self.own_path, target)
            self._handle.close()
            self._handle = None

    def _take_orphans(self) -> None:
        for path in sorted(self.directory.glob("spool-*.jsonl")):
            if path == self.own_path:
                continue
            try:
                handle = open(path, encoding="utf-8")  # noqa: SIM115
            except FileNotFoundError:
                continue
            with handle:
                if _lock(handle, blocking=False):  # its writer is gone
                    with suppress(FileNotFoundError):
                        os.replace(path, self.directory / f"drain-orphan-{uuid.uuid4().hex[:12]}.jsonl")

    def drain(self, apply: Callable[[SpoolEntry], None]) -> tuple[int, bool]:
        """Replay every spooled line through ``apply``: (lines applied, finished without a transient error).

        ``apply`` raises :class:`TransientError` when the database is still away (draining stops,
        the file stays) and any other exception for a line that can never be applied (rejected).
        """
        if not self.directory.is_dir():
            return 0, True
        self._take_own()
        self._take_orphans()
        applied = 0
        for path in sorted(self.directory.glob("drain-*.jsonl")):
            try:
                handle = open(path, "r+", encoding="utf-8")  # noqa: SIM115
            except FileNotFoundError:
                continue
            with handle:
                if not _lock(handle, blocking=False):
                    continue  # another process is draining it
                for entry in self._entries(handle, path):
                    try:
                        apply(entry)
                    except TransientError:
                        return applied, False
                    except Exception as exc:
                        log.error("spool line rejected (%s): kept in rejected.jsonl", type(exc).__name__)
                        self._reject(entry, exc)
                    applied += 1
                path.unlink()
        return applied, True

    def _entries(self, handle: IO[str], path: Path) -> Iterator[SpoolEntry]:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                yield json.loads(raw)
            except json.JSONDecodeError as exc:  # a torn last line after a crash
                self._reject({"file": path.name, "line": number, "raw": raw}, exc)

    def _reject(self, entry: SpoolEntry, exc: BaseException) -> None:
        self.reject(entry, exc)

    def reject(self, entry: SpoolEntry, exc: BaseException) -> None:
        """Keep what identifies the lost line, never its content (patient data) nor the error text.

        Also used by the journal's writer for a line the database will never take."""
        count_not_stored("rejected")
        names = ("type", "id", "recorded_at", "received_at", "file", "line")
        kept = {k: entry.get(k) for k in names if k in entry}
        private_dir(self.directory)
        with private_open(self.directory / "rejected.jsonl", "a", encoding="utf-8") as out:
            out.write(json.dumps({"error": type(exc).__name__, "entry": kept}, default=str) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
