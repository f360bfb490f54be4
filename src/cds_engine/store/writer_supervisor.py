"""``serve --writer process``: start and watch the writer process; the workers' side of it.

:class:`WriterSupervisor` runs in the process that owns the host's service — ``serve`` itself with
one worker, the supervising parent with ``--workers N`` — starts
:mod:`cds_engine.store.writer_process` and restarts it within a second if it dies (its
successor reads every remaining journal line again; replays are idempotent). A dead writer's
metrics leave the summed ``/metrics`` (prometheus-client multiprocess mode, which ``serve`` turns on
for this mode so the writer's journal depth and write lag are scraped from the workers as before).

:class:`WriterLink` stands where a worker's ``GroupWriter`` stood (``store.writer``):
``available`` is the writer's word on the database (its status file, when fresh) and ``close``
waits for this worker's journal to be committed — the shutdown flush.
:func:`attach_external_journal` turns a store opened without a journal into one whose sink only
appends.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from cds_engine.store.journal import Journal
from cds_engine.store.journal_sink import JournalSink
from cds_engine.store.writer_process import PARENT_ENV, URL_ENV, read_status

__all__ = ["WriterLink", "WriterSupervisor", "attach_external_journal"]

log = logging.getLogger("cds_engine.store.writer")

STATUS_FRESH_SECONDS = 3.0
RESTART_SECONDS = 1.0


class WriterSupervisor:
    """One writer process for ``directory``, restarted whenever it exits until :meth:`stop`."""

    def __init__(self, url: str, directory: str | Path, *, module: str = "cds_engine.store.writer_process",
                 env: dict[str, str] | None = None) -> None:
        """``module``: what ``python -m`` runs (``serve`` gives its entry point, which logs as it
        does); ``env``: added to the child's environment."""
        self.url = url
        self.directory = Path(directory)
        self.module = module
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._watch: threading.Thread | None = None

    def start(self) -> WriterSupervisor:
        self._spawn()
        self._watch = threading.Thread(target=self._watch_loop, name="cds-writer-watch", daemon=True)
        self._watch.start()
        return self

    def _spawn(self) -> None:
        env = {**os.environ, **self.env, URL_ENV: self.url, PARENT_ENV: str(os.getpid())}
        src = str(Path(__file__).resolve().parents[2])  # the package as this process imported it
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, str(self.directory)],
            env=env, stdin=subprocess.DEVNULL)
        log.info("store writer process [%d] started for %s", self.process.pid, self.directory)

    def _watch_loop(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                process = self.process
                if self._stop.is_set() or process is None or process.poll() is None:
                    continue
                log.warning("store writer process [%d] exited (%s): starting a replacement in %.0f s",
                            process.pid, process.returncode, RESTART_SECONDS)
                _forget_metrics(process.pid)
            if self._stop.wait(RESTART_SECONDS):
                return
            with self._lock:
                if not self._stop.is_set():
                    self.restarts += 1
                    self._spawn()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: the writer stores what it holds (≤ 5 s) and exits; killed after ``timeout``."""
        self._stop.set()
        if self._watch is not None:
            self._watch.join(timeout=2)
        with self._lock:
            process = self.process
        if process is None or process.poll() is not None:
            return
        with suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("store writer process [%d] did not stop in %.0f s: killed", process.pid, timeout)
            process.kill()
            process.wait(5)
        _forget_metrics(process.pid)


def _forget_metrics(pid: int) -> None:
    """Drop a dead writer's live gauge (journal depth) from the summed /metrics."""
    from cds_engine import metrics

    directory = os.environ.get(metrics.MULTIPROC_ENV)
    if not directory:
        return
    from prometheus_client import multiprocess

    with suppress(OSError):
        multiprocess.mark_process_dead(pid, directory)


class WriterLink:
    """A worker's handle on the host's writer process (``store.writer`` in ``--writer process``)."""

    def __init__(self, journal: Journal, supervisor: WriterSupervisor | None = None,
                 fallback: Callable[[], bool] = lambda: True) -> None:
        self.journal = journal
        self.supervisor = supervisor  # set when this process started the writer (serve, one worker)
        self.fallback = fallback  # ``available`` while the writer says nothing (starting, restarting)
        self._status: dict[str, Any] | None = None
        self._read_at = 0.0

    def status(self) -> dict[str, Any] | None:
        """The writer's status file, read at most every 0.5 s; None when missing or stale."""
        now = time.monotonic()
        if now - self._read_at >= 0.5:
            self._read_at = now
            self._status = read_status(self.journal.directory)
        status = self._status
        if status is None or time.time() - float(status.get("time", 0)) > STATUS_FRESH_SECONDS:
            return None
        return status

    @property
    def available(self) -> bool:
        """The writer's last word on the database; without a fresh one, this process's own view."""
        status = self.status()
        return self.fallback() if status is None else bool(status.get("available", True))

    def stats(self) -> dict[str, Any]:
        return {"writer": "process", "own_segments": self.journal.backlog(), **(self.status() or {})}

    def close(self, timeout: float = 5.0) -> None:
        """Hand this worker's journal over (closed segments) and wait ``timeout`` s for it to be
        committed; then stop the writer process if this process started it."""
        self.journal.retire()
        self.journal.flush()
        deadline = time.monotonic() + timeout
        while self.journal.backlog() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.supervisor is not None:
            self.supervisor.stop()


def attach_external_journal(store: Any, supervisor: WriterSupervisor | None = None) -> JournalSink:
    """Give ``store`` (opened with ``journal=False``) a sink that only appends to an external journal.

    Sets ``store.journal``, ``store.writer`` (a :class:`WriterLink`) and ``store.sink``, as
    ``open_store(journal=True)`` does for the writer thread, so ``store.close()`` flushes the same
    way: ``writer.close()`` (wait for the writer process), then ``journal.close()``."""
    journal = Journal(store.spool.directory, external=True).start()
    sink = JournalSink(store.engine, journal, store.direct_sink)
    direct = store.direct_sink
    link = WriterLink(journal, supervisor, fallback=lambda: bool(direct.available))
    sink.attach(link)  # type: ignore[arg-type]
    store.journal, store.writer, store.sink = journal, link, sink
    return sink
