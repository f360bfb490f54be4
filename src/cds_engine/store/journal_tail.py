""":class:`JournalTail`: the writer process's view of every worker's journal in one directory.

The workers (:class:`~cds_engine.store.journal.Journal` with ``external=True``) only append. This
class gives the :class:`~cds_engine.store.group_commit.GroupWriter` the same ``take``/``done``/
``backlog``/``adopt`` it uses on an in-process journal, by reading the files:

* **Live segments are tailed.** Each ``journal-*.jsonl`` is opened read-only and read from where the
  last scan stopped; only whole lines (up to the last ``\\n``) are taken — a line a worker is still
  writing waits for the next scan.
* **"No more lines" is the lock.** A worker holds an exclusive ``flock`` on every segment it may
  still append to. When the tail can take that lock, the worker let go of it (rotated, stopped) or
  died; the tail then keeps the lock, reads the file to its end (a last line without ``\\n`` can only
  be torn by a crash or power loss: parsed if it can be, else rejected), and the segment is closed.
  A dead worker's journal is therefore taken at the next scan (every few ms), well within 10 s.
* **"Done" is the file's removal.** A closed segment whose every line is committed (or rejected) is
  unlinked, then its descriptor closed. Nothing else records progress: after a crash of the writer
  process its successor reads every remaining file from the start, and the replay is idempotent by
  ids (evaluation ids and dedup keys, feedback ids) — so nothing is written twice.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from cds_engine.store.journal import (
    JournalEntry,
    JournalItem,
    Segment,
    _try_lock,
    decode_items,
    read_rest,
    same_file,
)

__all__ = ["JournalTail"]

Reject = Callable[[JournalEntry, BaseException], None]


@dataclass(eq=False)
class _Tailed:
    segment: Segment
    lines: int = 0  # whole lines read so far (line numbers for a rejected line)
    partial: bytes = b""  # the start of a line still being written


class JournalTail:
    """Every segment of ``directory`` read as it grows (module docstring); one reader per directory."""

    def __init__(self, directory: str | Path, reject: Reject) -> None:
        self.directory = Path(directory)
        self._reject = reject
        self._files: dict[str, _Tailed] = {}
        self._queue: deque[JournalItem] = deque()

    # -- what GroupWriter calls ------------------------------------------------------------------
    def take(self, limit: int, wait: float, linger: float = 0.0) -> list[JournalItem]:
        """Up to ``limit`` whole lines: scan now, else once more after ``wait`` s; then ``linger`` s for
        more when the batch is not full (fewer, larger commits)."""
        if not self._queue:
            self.scan()
        if not self._queue and wait > 0:
            time.sleep(wait)
            self.scan()
        if self._queue and linger > 0 and len(self._queue) < limit:
            time.sleep(linger)
            self.scan()
        count = min(limit, len(self._queue))
        return [self._queue.popleft() for _ in range(count)]

    def done(self, items: list[JournalItem]) -> None:
        for item in items:
            item.segment.done += 1
        self._reap()

    def backlog(self) -> int:
        """Lines read and not yet committed (lines not read yet are not counted).

        Also called from the status thread of the writer process: a snapshot of the files first."""
        return sum(t.segment.written - t.segment.done for t in tuple(self._files.values()))

    def adopt(self, reject: Reject) -> int:
        """GroupWriter's periodic adoption: here, one more scan (dead workers are found by every scan)."""
        self._reject = reject
        return self.scan()

    # -- reading ---------------------------------------------------------------------------------
    def scan(self) -> int:
        """Read what every segment gained since the last scan; returns how many lines were queued."""
        if not self.directory.is_dir():
            return 0
        queued = 0
        for path in sorted(self.directory.glob("journal-*.jsonl")):  # a worker's segments in order
            tailed = self._files.get(path.name)
            if tailed is None:
                tailed = self._open(path)
                if tailed is None:
                    continue
            if not tailed.segment.closed:
                queued += self._read(tailed)
        self._reap()
        return queued

    def _open(self, path: Path) -> _Tailed | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        tailed = _Tailed(Segment(path, fd))
        self._files[path.name] = tailed
        return tailed

    def _read(self, tailed: _Tailed) -> int:
        segment = tailed.segment
        # The lock first, then the read: whatever the worker wrote before letting go is read now.
        final = _try_lock(segment.fd)
        if final and not same_file(segment.fd, segment.path):
            segment.closed = True  # removed (and committed) by another reader: nothing to do here
            segment.written = segment.done
            return 0
        if not final and os.fstat(segment.fd).st_size <= _offset(tailed):
            return 0
        data = tailed.partial + read_rest(segment.fd)
        if final:
            whole, tailed.partial = data, b""
            segment.closed = True
        else:
            cut = data.rfind(b"\n") + 1
            whole, tailed.partial = data[:cut], data[cut:]
        entries, lines = decode_items(whole, segment.path, tailed.lines, self._reject)
        tailed.lines += lines
        segment.written += len(entries)
        self._queue.extend(JournalItem(segment, entry, value) for entry, value in entries)
        return len(entries)

    def _reap(self) -> None:
        for name, tailed in list(self._files.items()):
            segment = tailed.segment
            if segment.finished:
                with suppress(FileNotFoundError):
                    if same_file(segment.fd, segment.path):
                        segment.path.unlink()  # "done": removed while still holding its lock
                os.close(segment.fd)
                del self._files[name]

    def close(self) -> None:
        """Let go of every file (lines not committed are read again by the next writer)."""
        for tailed in self._files.values():
            with suppress(OSError):
                os.close(tailed.segment.fd)
        self._files.clear()
        self._queue.clear()


def _offset(tailed: _Tailed) -> int:
    """How far the descriptor has read (the file offset; the partial line is part of it)."""
    return os.lseek(tailed.segment.fd, 0, os.SEEK_CUR)


