"""The store writer as its own process: one per ``serve`` (per host), fed by every worker's journal.

Why a process: as a thread in each worker, a group commit held the GIL for a few ms of
SQLAlchemy/psycopg work, and a request that coincided waited for it (bench/hook.py: c1 p99 +8 to
+11 ms with the store on, c16 throughput 0.64–0.73×). Here the workers only append lines to their
journals (and fsync); this process reads them (:class:`~cds_engine.store.journal_tail.JournalTail`)
and runs the same :class:`~cds_engine.store.group_commit.GroupWriter`, so it is also the one writer
of a SQLite store.

Started and supervised by ``serve`` (:mod:`cds_engine.store.writer_supervisor`) as
``python -m cds_engine.store.writer_process DIRECTORY`` with the database URL in the environment
(:data:`URL_ENV`, never on the command line where ``ps`` shows it). It:

* holds an exclusive lock on ``DIRECTORY/writer.lock`` — two writers of one directory would each
  commit every line (harmless, idempotent, but twice the work); a second one waits for the first;
* migrates the database first (retrying while it is away: the journals keep growing meanwhile);
* writes ``DIRECTORY/writer-status.json`` every half second (up/down, backlog, written): the
  workers read it for their ``available`` and their shutdown flush;
* on SIGTERM writes what it holds for up to 5 s (the rest is read again by the next writer), and
  stops by itself when the process that started it is gone (no orphan after a SIGKILL of ``serve``);
* can run at a lower CPU priority (env :data:`NICE_ENV`, 0 to 19; default :data:`DEFAULT_NICE`, the
  priority of ``serve``) so that a worker answering a hook gets a contended core first. Not the
  default: at the load goal (2 cores saturated) ``nice`` +10 starved the writer and its write lag p99
  rose from ~1 s to 6-9 s (goal 2 s) and fewer answers were given; only the single-client
  latency gained (bench/RESULTS.md, fifth session);
* can be kept to CPUs of its own (env :data:`~cds_engine.cpu_affinity.WRITER_CPUS_ENV`, e.g. ``1``;
  ``serve --writer-cpus``), so that it and the database do not share a CPU's time with the workers
  answering hooks: with the server and its client on another CPU the c1 p99 cost of the store fell
  from +3.3 to +0.5 ms, where its priority did nothing (bench/RESULTS.md, "Where the c1 tail comes
  from"). Unset (the default): not pinned.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

from cds_engine.cpu_affinity import WRITER_CPUS_ENV, pin_from_env
from cds_engine.files import private_dir, private_open

if TYPE_CHECKING:  # imported when the writer starts (run), not by the workers reading the status file
    from sqlalchemy import Engine

    from cds_engine.store.group_commit import GroupWriter, LineSource, Reject

__all__ = ["DEFAULT_NICE", "LOCK_FILE", "NICE_ENV", "STATUS_FILE", "URL_ENV", "lower_priority", "main",
           "process_writer", "read_status", "run", "tune_collector"]

log = logging.getLogger("cds_engine.store.writer")

URL_ENV = "CDS_WRITER_DATABASE_URL"
PARENT_ENV = "CDS_WRITER_PARENT_PID"
NICE_ENV = "CDS_WRITER_NICE"
DEFAULT_NICE = 0
LOCK_FILE = "writer.lock"
STATUS_FILE = "writer-status.json"
STATUS_INTERVAL = 0.5
STATS_INTERVAL = 5.0  # lag percentiles in the status (the workers log them at stop)
STOP_SECONDS = 5.0
BASE_LINGER = 0.05  # s a first line waits for company while the rate is at most LINGER_RATE
MAX_LINGER = 0.5  # s, reached at 10 × LINGER_RATE lines/s (process_writer)
LINGER_RATE = 4.0  # lines/s
IDLE_WAIT = 0.1  # s between directory scans once no line came for IDLE_AFTER s
IDLE_AFTER = 1.0
GC_THRESHOLD = 10_000  # allocations between first-generation collections (tune_collector)


def read_status(directory: str | Path) -> dict[str, Any] | None:
    """The writer process's last status, or None (no writer yet, or a file being replaced)."""
    try:
        return json.loads((Path(directory) / STATUS_FILE).read_bytes())
    except (OSError, ValueError):
        return None


def _write_status(directory: Path, status: dict[str, Any]) -> None:
    """Replace the status file. It is advisory (workers' health and metrics read it): a directory
    that is gone (removed after ``serve`` stopped while this process was finishing) or full is
    logged, never a crash of the writer mid-write."""
    temporary = directory / f".{STATUS_FILE}.{os.getpid()}"
    try:
        with private_open(temporary, "w", encoding="utf-8") as out:
            json.dump(status, out)
        os.replace(temporary, directory / STATUS_FILE)
    except OSError as exc:
        log.warning("writer: status file not written (%s: %s)", type(exc).__name__, exc)
        with suppress(OSError):
            temporary.unlink()


def _lock(directory: Path, stop: threading.Event) -> int:
    """Wait for the directory's writer lock (another writer may be finishing); returns its fd."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    if fcntl is None:  # pragma: no cover
        return fd
    while not stop.is_set():
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            stop.wait(0.2)
    return fd


def _migrate(engine: Any, directory: Path, stop: threading.Event) -> bool:
    from cds_engine.store import migrate
    from cds_engine.store.sink import is_transient

    pause = 0.5
    while not stop.is_set():
        try:
            migrate.upgrade(engine)
            return True
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("writer: database unavailable (%s); the journals keep the writes", type(exc).__name__)
            _write_status(directory, {"pid": os.getpid(), "time": time.time(), "available": False})
            stop.wait(pause)
            pause = min(pause * 2, 5.0)
    return False


def process_writer(engine: Engine, tail: LineSource, reject: Reject) -> GroupWriter:
    """The :class:`~cds_engine.store.group_commit.GroupWriter` this process runs over ``tail``.

    ``wait``: while lines come, the directory is scanned every 20 ms when nothing is pending (≤ 20 ms
    more lag); after :data:`IDLE_AFTER` s without a line every :data:`IDLE_WAIT` s — scanning
    every 20 ms cost an idle host ~1.3% of a core (≤ 100 ms more lag for the first line after a lull).
    The linger is the base 50 ms up to :data:`LINGER_RATE` lines/s (one call now and then — a
    clinic, a test — is stored within ~70 ms) and reaches :data:`MAX_LINGER` from ten times that
    rate. Why so early: no request waits on this process, but its CPU and the database's compete
    for the cores the workers answer on, and most of that CPU is per *commit*, not per line
    (``bench/writer.py --batch``: ~4 ms writer + ~2.6 ms PostgreSQL per commit against ~0.2 +
    0.15 ms per line). With the growth from 20 lines/s (the earlier setting) 40 calls/s were
    committed 4 at a time — ~1.1 ms writer + 0.7 ms PostgreSQL per call; at the full linger
    ~20 at a time. The write lag stays ≤ the linger plus a commit (goal p99 ≤ 2 s)."""
    from cds_engine.store.group_commit import GroupWriter

    return GroupWriter(engine, tail, reject, wait=0.02, linger=BASE_LINGER, max_linger=MAX_LINGER,
                       linger_rate=LINGER_RATE, idle_wait=IDLE_WAIT, idle_after=IDLE_AFTER)


def tune_collector() -> None:
    """Fewer, cheaper passes of the cyclic garbage collector in this process (once, after start-up).

    Why: a scan reads every line the journals gained, so a backlog (a paused database) is held as
    thousands of validated records at once, and each collection walked all of them and every
    module object: half of the decoding time of a 3,000-line backlog (``bench/writer.py --tail``).
    ``gc.freeze`` moves what start-up made (modules, compiled statements) out of the collector's
    view; a first-generation threshold of :data:`GC_THRESHOLD` allocations instead of 700 makes
    collections rare. Nothing here relies on cycles being freed early: records, rows and batches
    are freed by reference counting as each commit ends."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, second, third)


def run(url: str, directory: str | Path, stop: threading.Event, parent: int | None = None) -> None:
    """Write every journal line of ``directory`` into ``url`` until ``stop`` is set (or ``parent`` dies)."""
    from cds_engine import metrics
    from cds_engine.store.db import create_db_engine, resolve_url
    from cds_engine.store.group_commit import _name_os_thread
    from cds_engine.store.journal_tail import JournalTail
    from cds_engine.store.spool import Spool

    directory = private_dir(directory)
    _name_os_thread(b"cds-writer")  # bench/load.py finds the writer's CPU by this name
    lock = _lock(directory, stop)
    engine = create_db_engine(resolve_url(url))
    spool = Spool(directory)  # only for rejected.jsonl: the workers drain their own spools
    tail = JournalTail(directory, spool.reject)
    writer: GroupWriter | None = None
    try:
        if not _migrate(engine, directory, stop):
            return
        tune_collector()
        writer = process_writer(engine, tail, spool.reject).start()
        stats, stats_at = writer.stats(), time.monotonic()
        while not stop.wait(STATUS_INTERVAL):
            if parent is not None and os.getppid() != parent:
                log.warning("writer: the serve process is gone; stopping")
                break
            if time.monotonic() - stats_at >= STATS_INTERVAL:  # sorts up to 20,000 lags: not every beat
                stats, stats_at = writer.stats(), time.monotonic()
            _write_status(directory, {"pid": os.getpid(), "time": time.time(), "available": writer.available,
                                      **stats, "written": writer.written, "commits": writer.commits,
                                      "backlog": tail.backlog()})
        metrics.JOURNAL_DEPTH.set(0)
    finally:
        if writer is not None:
            writer.close(STOP_SECONDS)
            _write_status(directory, {"pid": os.getpid(), "time": time.time(), "available": False,
                                      "stopped": True, **writer.stats()})
            log.info("writer process at stop: %s", writer.stats())
        tail.close()
        engine.dispose()
        os.close(lock)


def lower_priority(value: str | None) -> int:
    """Add ``value`` (``CDS_WRITER_NICE``; default :data:`DEFAULT_NICE`) to this process's niceness;
    the niceness now. A value that is not a whole number in 0..19 is logged and ignored: the
    priority is a speed matter, never a reason for the store to stop writing."""
    try:
        increment = DEFAULT_NICE if value is None or not value.strip() else int(value)
        if not 0 <= increment <= 19:
            raise ValueError(f"not in 0..19: {increment}")
    except ValueError as exc:
        log.warning("writer: %s=%r ignored (%s); the priority is left as it is", NICE_ENV, value, exc)
        return os.nice(0)
    return os.nice(increment)  # raising one's own niceness needs no privilege


def main(argv: list[str] | None = None, *, configure: bool = True) -> int:
    """``configure``: plain text logging (``serve`` starts :mod:`cds_engine.commands.serve_writer`,
    which logs as ``serve`` does and passes False)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not os.environ.get(URL_ENV):
        print(f"usage: {URL_ENV}=URL python -m cds_engine.store.writer_process DIRECTORY", file=sys.stderr)
        return 2
    if configure:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the migration check at each (re)start
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: serve stops us in order
    parent = int(os.environ[PARENT_ENV]) if os.environ.get(PARENT_ENV) else None
    os.umask(0o077)
    log.debug("writer: niceness %d", lower_priority(os.environ.get(NICE_ENV)))
    pin_from_env(os.environ.get(WRITER_CPUS_ENV), "store writer process")  # before run() starts threads
    run(os.environ[URL_ENV], args[0], stop, parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
