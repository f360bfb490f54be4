"""A per-process, append-only journal of store writes: the hook's answer never waits for the database.

Each write (an evaluation, a feedback) is one JSON line appended with a single ``os.write`` to
this process's current segment before the hook answers: a process that is killed loses nothing,
because the kernel already holds the line. A background flusher ``fsync``s the segment at least
every ``fsync_interval`` (default 20 ms, the bound the issue allows), so a *power loss* may lose up
to one interval of writes — the request never waits on ``fsync``. A writer thread takes lines in
batches (:meth:`Journal.take`) and marks them done once committed (:meth:`Journal.done`); a
segment that is full (or old) is closed and removed when every line of it is done.

Ownership is an exclusive ``flock`` on every open segment. A segment is created under a name
the adopters do not look at, locked, then renamed, so nobody can take a segment being born. A
``journal-*.jsonl`` whose lock *can* be taken belongs to a dead process: :meth:`adopt` takes it
(the survivor or a replacement worker calls it every second or so) and its lines are replayed.
Replays are idempotent (evaluation ids and dedup keys, feedback ids), so a crash between a
commit and the segment's removal writes nothing twice.

``external=True`` (``serve --writer process``): this process only appends. The writer is another
process (:mod:`cds_engine.store.writer_process`) that tails every segment of the directory
(:class:`~cds_engine.store.journal_tail.JournalTail`). A segment this process stops appending to
(rotated, old, or at shutdown) is fsynced and its descriptor closed by the flusher, which releases
the lock: *a segment whose lock can be taken gets no more lines*, whether its process rotated it or
died — the writer then reads it to the end and removes it once every line is committed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError
from typing_extensions import TypedDict

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

from cds_engine.alerts import Alert, AlertSource, AlertSuggestion
from cds_engine.files import FILE_MODE, private_dir
from cds_engine.store.api import EvaluationRecord, IssuedAlert

__all__ = ["Journal", "JournalItem", "Segment", "decode_items", "decode_lines", "read_rest", "same_file"]

log = logging.getLogger("cds_engine.store.journal")

_SLEEP_TICK = 0.1  # fsync intervals up to this sleep in time.sleep (see Journal._flush_loop)

JournalEntry = dict[str, Any]


def _try_lock(fd: int) -> bool:
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the open file ``fd`` (not removed, not replaced)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def read_rest(fd: int) -> bytes:
    """Everything from the descriptor's offset to the end of the file."""
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def decode_lines(data: bytes, path: Path, before: int,
                 reject: Callable[[JournalEntry, BaseException], None]) -> tuple[list[JournalEntry], int]:
    """The entries of whole journal lines, and how many lines ``data`` held. ``before``: lines of
    the file already read (line numbers in rejections count from the file's start). A line that
    is not JSON — torn by a crash or a power loss — is rejected by file and line, never stored."""
    items, count = decode_items(data, path, before, reject, parse=False)
    return [entry for entry, _ in items], count


def _plain(model: type[BaseModel]) -> Any:
    """A TypedDict of the model's fields, every key required: validated into the dict that
    ``model_dump(mode="json")`` gives (same keys, order and values) without building the model.
    Only for plain models: a field constraint, validator or serializer would not be carried over,
    so a model that gains one stops the import here rather than being read unchecked."""
    hooks = model.__pydantic_decorators__
    found = (hooks.field_validators, hooks.model_validators, hooks.field_serializers, hooks.model_serializers,
             hooks.computed_fields, hooks.validators)
    if any(f.metadata for f in model.model_fields.values()) or any(found):
        raise TypeError(f"{model.__name__} is not a plain model: read it as the model itself")
    return TypedDict(f"_{model.__name__}Dict", {name: f.annotation for name, f in model.model_fields.items()})


_SourceDict = _plain(AlertSource)
_SuggestionDict = _plain(AlertSuggestion)


class _LineAlert(Alert):
    """An alert as the writer reads it from a line: its sources and suggestions validated into the
    plain dicts the alert rows store, not into models the writer dumps again (writer.py
    ``_alert_rows``: ~0.02 ms of the writer's CPU per stored line, issue 19). A line that leaves
    out one of their keys (a default) is not read this way: it takes ``decode_items``' former way."""

    suggestions: list[_SuggestionDict] = Field(default_factory=list)  # type: ignore[assignment,valid-type]
    sources: list[_SourceDict] = Field(default_factory=list)  # type: ignore[assignment,valid-type]


class _LineIssuedAlert(IssuedAlert):
    alert: _LineAlert


class _LineRecord(EvaluationRecord):
    alerts: list[_LineIssuedAlert] = Field(default_factory=list)  # type: ignore[assignment]


class _EvaluationLine(BaseModel):
    """An evaluation line as :class:`~cds_engine.store.journal_sink.JournalSink` writes it."""

    type: Literal["evaluation"]
    id: str
    recorded_at: str
    record: _LineRecord


_EVALUATION_PREFIX = b'{"type":"evaluation",'


def decode_items(data: bytes, path: Path, before: int, reject: Callable[[JournalEntry, BaseException], None],
                 *, parse: bool = True) -> tuple[list[tuple[JournalEntry, Any]], int]:
    """:func:`decode_lines` with each evaluation's record validated: (entry, record or None) pairs.

    Why: the writer process reads every line from a file, and parsing it to a dict and then
    validating the dict's record walked each line twice. An evaluation line as the service writes
    it is validated once from its bytes (pydantic's JSON parser); its entry keeps ``type``, ``id``
    and ``recorded_at`` and the record travels as the value, as for a line journaled in this
    process. Any line that way refuses takes the former way unchanged (``json.loads``; the record
    is validated, and refused, when it is written), so an odd line is rejected as before."""
    items: list[tuple[JournalEntry, Any]] = []
    lines = data.splitlines()
    for number, raw in enumerate(lines, before + 1):
        if not raw.strip():
            continue
        if parse and raw.startswith(_EVALUATION_PREFIX):
            try:
                line = _EvaluationLine.model_validate_json(raw)
            except ValidationError:
                pass  # the line is read the former way below
            else:
                items.append(({"type": line.type, "id": line.id, "recorded_at": line.recorded_at},
                              line.record))
                continue
        try:
            items.append((json.loads(raw), None))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            reject({"file": path.name, "line": number}, exc)
    return items, len(lines)


@dataclass(eq=False)
class Segment:
    """One journal file: its locked descriptor, how many lines it holds and how many are done."""

    path: Path
    fd: int
    opened: float = field(default_factory=time.monotonic)
    written: int = 0
    done: int = 0
    closed: bool = False  # no more appends (rotated, or adopted from a dead process)
    dirty: bool = False  # appended since the last fsync

    @property
    def finished(self) -> bool:
        return self.closed and self.done >= self.written


@dataclass(eq=False)
class JournalItem:
    segment: Segment
    entry: JournalEntry
    value: Any = None  # the object the line was made from (this process), so the writer need not parse it


class Journal:
    """Append-only segments in ``directory`` (0700), files 0600, one writer process per segment."""

    def __init__(self, directory: str | Path, *, fsync_interval: float = 0.02, segment_lines: int = 2000,
                 segment_seconds: float = 5.0, external: bool = False) -> None:
        self.external = external  # another process writes the lines into the database (module docstring)
        self.directory = Path(directory)
        self.instance = uuid.uuid4().hex[:12]
        self.fsync_interval = fsync_interval
        self.segment_lines = segment_lines
        self.segment_seconds = segment_seconds
        self._lock = threading.Condition()
        self._queue: deque[JournalItem] = deque()
        self._segments: list[Segment] = []
        self._current: Segment | None = None
        self._number = 0
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by an append while the flusher is parked: it has work
        self._parked = True  # the flusher sleeps until an append (or, external, a segment's age)
        self._flusher: threading.Thread | None = None
        self._fsync_lock = threading.Lock()  # external: the flusher and flush() never close an fd in use
        self.appended = 0
        self.fsyncs = 0

    # -- appending ---------------------------------------------------------------------------
    def start(self) -> Journal:
        private_dir(self.directory)
        self._flusher = threading.Thread(target=self._flush_loop, name="cds-journal-fsync", daemon=True)
        self._flusher.start()
        return self

    def append(self, entry: JournalEntry, value: Any = None, line: bytes | None = None) -> Path:
        """One line, written before returning (survives the process being killed); fsync comes later.

        ``value`` (e.g. the validated record) travels with the line in memory for the writer;
        ``line`` is ``entry`` already serialised (one JSON object, no newline) when the caller has it.
        Returns the segment's path (external: the line is committed once that file is gone)."""
        if line is None:
            line = json.dumps(entry, separators=(",", ":"), default=str).encode()
        data = line + b"\n"
        with self._lock:
            segment = self._writable()
            view = memoryview(data)
            while view:  # a regular file takes it whole; loop for the pathological short write
                view = view[os.write(segment.fd, view):]
            segment.written += 1
            segment.dirty = True
            if self._parked:  # only the first append after an idle interval pays for a wake-up
                self._parked = False
                self._wake.set()
            self.appended += 1
            if not self.external:  # external: the writer process reads the file, not this queue
                self._queue.append(JournalItem(segment, entry, value))
                self._lock.notify()
            return segment.path

    def _writable(self) -> Segment:
        current = self._current
        if current is not None and (current.written >= self.segment_lines
                                    or time.monotonic() - current.opened >= self.segment_seconds):
            self._close_current()
            current = None
        if current is None:
            current = self._current = self._new_segment()
        return current

    def _new_segment(self) -> Segment:
        private_dir(self.directory)
        self._number += 1
        name = f"journal-{self.instance}-{self._number:06d}.jsonl"
        birth = self.directory / f"new-{name}"  # adopters only look at journal-*: lock, then show it
        fd = os.open(birth, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, FILE_MODE)
        _try_lock(fd)
        os.replace(birth, self.directory / name)
        segment = Segment(self.directory / name, fd)
        self._segments.append(segment)
        return segment

    def _close_current(self) -> None:
        """Stop appending to the current segment (its lines still await the writer)."""
        if self._current is not None:
            self._current.closed = True
            self._current = None
            if not self.external:  # external: the flusher fsyncs it, then lets go of it (_release)
                self._reap()

    def retire(self) -> None:
        """Close the current segment (removed at once if every line is done; a new one opens on demand)."""
        with self._lock:
            self._close_current()
        self._wake.set()  # external: the flusher lets go of it

    def _flush_loop(self) -> None:
        """fsync at most ``fsync_interval`` after an append, once per interval, and park when idle.

        While lines come, the flusher ticks on its own timer: one ``fsync`` per interval for every
        line of it, and the append path sets a flag, nothing more. A tick that finds nothing written
        parks it (no wake-ups in an idle worker); the next append wakes it, and it syncs one
        interval later. Why not wake it from every append to a clean segment, as before: each
        wake-up was a futex call on the hook's path and one more time the flusher took the GIL from
        the event loop mid-request (three per interval, now two: the tick and the ``fsync``'s
        return). The ticks are at a fixed rate (the time an ``fsync`` takes is not added to
        the next wait), so a line is synced at most one interval, plus the ``fsync`` under way when
        it was written, after its write. External: it also wakes when the current
        segment is old enough to be handed over."""
        interval = self.fsync_interval
        monotonic = time.monotonic
        # a short tick sleeps in one system call (an Event's timed wait is a Condition: a lock made,
        # taken and dropped in Python every tick); close() then waits at most one tick for the thread
        pause = time.sleep if interval <= _SLEEP_TICK else self._stop.wait
        while True:
            self._wake.wait(self._idle_timeout())
            tick = monotonic()
            while True:
                # fixed rate: a tick every interval, the fsync's own time not added to the wait
                # (the bound is an fsync at least every 20 ms); after a stall, start afresh
                now = monotonic()
                tick = max(tick + interval, now - interval)
                if tick > now:
                    pause(tick - now)
                if self._stop.is_set():
                    return
                if self.external:  # nobody here marks lines done: an idle segment is handed over by age
                    self._hand_over_old()
                if not self.flush() and self._park():
                    break

    def _park(self) -> bool:
        """Mark the flusher parked unless a line came since the tick's ``flush`` looked (checked
        under the append lock, where an append reads the mark: no append is missed)."""
        with self._lock:
            if any(s.dirty for s in self._segments):
                return False
            self._parked = True
            self._wake.clear()
            return True

    def _hand_over_old(self) -> None:
        """External: close the current segment once it is ``segment_seconds`` old."""
        current = self._current  # a look without the lock first: on most ticks it is young
        if current is None or time.monotonic() - current.opened < self.segment_seconds:
            return
        with self._lock:
            current = self._current
            if current is not None and time.monotonic() - current.opened >= self.segment_seconds:
                self._close_current()

    def _idle_timeout(self) -> float | None:
        """How long the flusher may sleep without an append: external, until the current segment
        is ``segment_seconds`` old (then it is handed over); else until woken."""
        if not self.external:
            return None
        with self._lock:
            current = self._current
            if current is None:
                return None
            return max(0.0, current.opened + self.segment_seconds - time.monotonic())

    def flush(self) -> bool:
        """fsync every segment written since the last call (outside the append lock); whether any was.

        External: then close the segments that get no more lines, which releases their locks — the
        writer process takes that as "finished" (module docstring)."""
        with self._fsync_lock:
            with self._lock:
                dirty = [s for s in self._segments if s.dirty]
                for segment in dirty:
                    segment.dirty = False
            for segment in dirty:
                with suppress(OSError):  # a segment reaped meanwhile: its lines are committed already
                    os.fsync(segment.fd)
                    self.fsyncs += 1
            if self.external:
                self._release()
        return bool(dirty)

    def _release(self) -> None:
        """External: let go of closed, fsynced segments (not removed: the writer process does that)."""
        if not any(s.closed for s in self._segments):  # most ticks: only the open segment (no lock)
            return
        with self._lock:
            for segment in [s for s in self._segments if s.closed and not s.dirty]:
                os.close(segment.fd)
                self._segments.remove(segment)

    def own_files(self) -> list[Path]:
        """This process's segments still in the directory (external: not yet all committed)."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(f"journal-{self.instance}-*.jsonl"))

    # -- the writer's side -------------------------------------------------------------------
    def take(self, limit: int, wait: float, linger: float = 0.0) -> list[JournalItem]:
        """Up to ``limit`` lines in append order, waiting at most ``wait`` s for the first and then
        ``linger`` s for more (fewer, larger commits: the writer's cost is mostly per transaction)."""
        with self._lock:
            if not self._queue:
                self._lock.wait(wait)
            if self._queue and linger > 0 and len(self._queue) < limit:
                self._lock.release()  # appends go on meanwhile, without waking the writer for each
                try:
                    time.sleep(linger)
                finally:
                    self._lock.acquire()
            count = min(limit, len(self._queue))
            return [self._queue.popleft() for _ in range(count)]

    def done(self, items: list[JournalItem]) -> None:
        """These lines are in the database (or rejected): segments with nothing left are removed."""
        with self._lock:
            for item in items:
                item.segment.done += 1
            current = self._current
            if current is not None and current.done >= current.written and (
                    time.monotonic() - current.opened >= self.segment_seconds):
                self._close_current()  # an idle process does not keep an old file forever
            self._reap()

    def _reap(self) -> None:
        for segment in [s for s in self._segments if s.finished]:
            with suppress(FileNotFoundError):
                segment.path.unlink()
            os.close(segment.fd)  # releases the lock after the name is gone
            self._segments.remove(segment)

    def backlog(self) -> int:
        """Lines appended or adopted and not yet done (external: segments not yet removed by the
        writer process — a count of files, not lines; 0 means all of this process's lines are in)."""
        if self.external:
            return len(self.own_files())
        with self._lock:
            return sum(s.written - s.done for s in self._segments)

    def pending(self) -> bool:
        """Is anything waiting here, ours or a dead process's (a file in the directory)?"""
        if self.backlog():
            return True
        return self.directory.is_dir() and any(self.directory.glob("journal-*.jsonl"))

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("journal-*.jsonl")) if self.directory.is_dir() else []

    # -- adoption ----------------------------------------------------------------------------
    def adopt(self, reject: Callable[[JournalEntry, BaseException], None]) -> int:
        """Take over the segments of dead processes; returns how many lines were queued."""
        queued = 0
        for path in self.files():
            if path.name.startswith(f"journal-{self.instance}-"):
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            if not _try_lock(fd) or not same_file(fd, path):
                os.close(fd)  # alive (locked), or adopted and removed by someone else meanwhile
                continue
            entries = self._read(fd, path, reject)
            segment = Segment(path, fd, written=len(entries), closed=True)
            with self._lock:
                self._segments.append(segment)
                self._queue.extend(JournalItem(segment, e, value) for e, value in entries)
                self._lock.notify()
                self._reap()  # an empty file goes at once
            queued += len(entries)
            log.warning("adopted journal %s of a stopped process: %d write(s) to replay", path.name,
                        len(entries))
        return queued

    @staticmethod
    def _read(fd: int, path: Path,
              reject: Callable[[JournalEntry, BaseException], None]) -> list[tuple[JournalEntry, Any]]:
        entries, _ = decode_items(read_rest(fd), path, 0, reject)
        return entries

    # -- shutdown ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the flusher, fsync, and release every segment (lines not done stay for replay)."""
        self._stop.set()
        self._wake.set()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
        with self._lock:
            if self._current is not None:
                self._current.closed = True
                self._current = None
        self.flush()
        with self._lock:
            if not self.external:
                self._reap()
            for segment in self._segments:
                os.close(segment.fd)
            self._segments.clear()
            self._queue.clear()
