"""Hot reload: swap in edited rule packs without a restart, never serving a broken one.

:class:`EngineHolder` owns the current :class:`~cds_engine.engine.Engine`. Calling it returns
that engine — it is the zero-argument ``engine_provider`` the service's ``create_app`` takes.
It reloads when a watched file changes (a polling thread compares modification times and
sizes of ``DIR/*/pack.yaml``, ``DIR/vocabulary/*`` and the site file) or on SIGHUP. A reload
runs the full verifier (:func:`cds_engine.authoring.verify.verify_dir`); only a directory without
errors is compiled into a new engine, which then replaces the old one in a single assignment
(requests already running finish on the engine they started with). An invalid new version is
rejected: the last good engine keeps serving and :attr:`EngineHolder.last_error` holds the
findings (file:line: rule: message) until a good version arrives.

By default the holder runs ``active`` and ``draft`` packs: draft alerts carry
``pack_status="draft"`` and must be stored, not shown (:func:`cds_engine.rules.governance.is_shown`).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from cds_engine.authoring.verify import verify_dir
from cds_engine.engine import Engine, EvaluatorName
from cds_engine.rules.errors import Finding, PackLoadError
from cds_engine.rules.governance import RUNNING_STATUSES
from cds_engine.rules.site import SITE_FILE
from cds_engine.service.heap import refreeze

__all__ = ["EngineHolder", "ReloadEvent", "sighup_holder"]

log = logging.getLogger(__name__)
Fingerprint = tuple[tuple[str, int, int], ...]
# the holder SIGHUP last reloaded in this process (install_sighup); weak: a test runner builds many
_SIGHUP_HOLDER: list[weakref.ref[EngineHolder]] = []


def sighup_holder() -> EngineHolder | None:
    """The holder serving this process's rules (the one wired to SIGHUP), if any.

    A spare ``serve --workers N`` worker finds through it the packs to bring up to date before it
    takes a dead worker's place (:mod:`cds_engine.commands.serve_workers`)."""
    return _SIGHUP_HOLDER[0]() if _SIGHUP_HOLDER else None


def _retire(retired: list[Engine]) -> None:
    """Close the engine a reload swapped out; in a worker that froze its heap, refreeze it
    (:func:`cds_engine.service.heap.refreeze`: no old pack's objects stay frozen).

    The engine comes in a list that is emptied first: the timer keeps its arguments, and an
    engine still referenced while the heap is refrozen would be frozen again."""
    old = retired.pop()
    try:
        old.close()
    finally:
        del old
        refreeze()


@dataclass(frozen=True)
class ReloadEvent:
    """What one reload attempt did (kept in :attr:`EngineHolder.history`)."""

    at: float
    accepted: bool
    reason: str
    packs: tuple[str, ...]  # "id version hash12" of the engine now serving
    findings: tuple[Finding, ...] = ()


class EngineHolder:
    """The current engine, reloaded atomically on file change or SIGHUP."""

    def __init__(self, directory: str | Path = "rules", *, evaluator: EvaluatorName = "rete",
                 statuses: tuple[str, ...] = RUNNING_STATUSES, site: str | Path | bool | None = True,
                 poll_seconds: float = 2.0, on_reload: Callable[[ReloadEvent], None] | None = None) -> None:
        """Load the directory now; raise :class:`PackLoadError` if there is no good version to start from."""
        self.grace_seconds = 30.0  # how long a swapped-out engine stays usable before its rulesets are freed
        self.directory = Path(directory)
        self.evaluator: EvaluatorName = evaluator
        self.statuses = statuses
        self.site = site
        self.poll_seconds = poll_seconds
        self.on_reload = on_reload
        self.last_error: list[Finding] | None = None
        self.history: list[ReloadEvent] = []
        self.generation = 0
        self._lock = threading.Lock()  # one reload at a time; readers never wait
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous_handler: Any = None
        self._fingerprint = self._scan()
        engine, findings = self._build()
        if engine is None:
            raise PackLoadError(findings)
        self._engine: Engine = engine
        self._record(True, "initial load", ())

    # the provider interface
    def __call__(self) -> Engine:
        return self._engine

    @property
    def engine(self) -> Engine:
        return self._engine

    # loading
    def _watched(self) -> list[Path]:
        files = list(self.directory.glob("*/pack.yaml"))
        vocab = self.directory / "vocabulary"
        if vocab.is_dir():
            files.extend(p for p in vocab.iterdir() if p.is_file())
        site = self.directory / SITE_FILE if self.site is True else (Path(self.site) if self.site else None)
        if site is not None:
            files.append(site)
        return sorted(files)

    def _scan(self) -> Fingerprint:
        out = []
        for path in self._watched():
            try:
                st = path.stat()
            except OSError:
                continue  # absent (optional site file) or just removed
            out.append((str(path), st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _build(self) -> tuple[Engine | None, list[Finding]]:
        try:
            report = verify_dir(self.directory, self.site)
        except (OSError, ValueError) as exc:  # unreadable files mid-write, a vanished directory
            return None, [Finding(str(self.directory), None, None, f"cannot load rules: {exc}")]
        if not report.ok:
            return None, report.errors or report.findings
        engine = Engine(report.compiled(), self.evaluator, self.statuses, report.site.sha256)
        return engine, [f for f in report.findings if f.severity != "error"]

    def _record(self, accepted: bool, reason: str, findings: tuple[Finding, ...]) -> ReloadEvent:
        packs = tuple(f"{p.id} {p.version} {p.content_hash[:12]}" for p in self._engine.packs)
        event = ReloadEvent(time.time(), accepted, reason, packs, findings)
        self.history = [*self.history[-49:], event]
        if self.on_reload is not None:
            try:
                self.on_reload(event)
            except Exception:  # a listener must not break reloading
                log.exception("on_reload listener failed")
        return event

    def reload(self, reason: str = "requested") -> bool:
        """Verify and load the directory now; swap only if it has no errors. True if swapped."""
        with self._lock:
            return self._reload_locked(reason)

    def refresh(self, reason: str = "refresh") -> bool:
        """Bring the engine up to date before answering again; True if a new engine was swapped in.

        For a process that has kept its packs without serving (a spare worker about to take a dead
        worker's place): it must not answer on packs older than the files. A reload already running
        in the watcher is waited for (the lock); then the directory is reloaded if a watched file
        changed since the last attempt or a SIGHUP is still waiting for the watcher. A refused
        reload keeps the last good packs, as it does in every live worker."""
        with self._lock:
            pending = self._wake.is_set() and not self._stop.is_set()
            if not pending and self._scan() == self._fingerprint:
                return False
            return self._reload_locked(f"{reason}, SIGHUP pending" if pending else reason)

    def _reload_locked(self, reason: str) -> bool:
        self._fingerprint = self._scan()
        engine, findings = self._build()
        if engine is None:
            self.last_error = findings
            log.error("rule reload rejected (%s); still serving the last good packs:\n%s", reason,
                      "\n".join(str(f) for f in findings))
            self._record(False, reason, tuple(findings))
            return False
        old, self._engine = self._engine, engine  # the swap: a single reference assignment
        # free the old engine's durable rulesets once requests started on it have surely finished
        closer = threading.Timer(self.grace_seconds, _retire, ([old],))
        closer.daemon = True
        closer.start()
        self.generation += 1
        self.last_error = None
        names = ", ".join(f"{p.id} {p.version}" for p in engine.packs)
        log.info("rules reloaded (%s): %s", reason, names)
        self._record(True, reason, tuple(findings))
        return True

    def check(self) -> bool:
        """Reload if a watched file changed since the last attempt. True if a new engine was swapped in."""
        if self._scan() == self._fingerprint:
            return False
        return self.reload("file change")

    # watching
    def start(self) -> EngineHolder:
        """Start the polling thread (daemon). Idempotent."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="rules-reload", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.poll_seconds * 2))
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            signalled = self._wake.wait(self.poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if signalled:
                    self.reload("SIGHUP")
                else:
                    self.check()
            except Exception:  # keep watching whatever happens; the last good engine stays
                log.exception("rule reload failed unexpectedly")

    def install_sighup(self) -> None:
        """Reload on SIGHUP (main thread only). With the watcher running, the reload happens there."""
        def handler(signum: int, frame: FrameType | None) -> None:
            if self._thread is not None and self._thread.is_alive():
                self._wake.set()
            else:
                self.reload("SIGHUP")

        self._previous_handler = signal.signal(signal.SIGHUP, handler)
        _SIGHUP_HOLDER[:] = [weakref.ref(self)]

    def uninstall_sighup(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None
        if sighup_holder() is self:
            _SIGHUP_HOLDER.clear()

    def __enter__(self) -> EngineHolder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.uninstall_sighup()
