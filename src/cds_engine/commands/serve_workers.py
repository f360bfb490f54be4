"""``cds-engine serve --workers N``: N uvicorn worker processes, each a complete service.

Why this shape: uvicorn starts workers as fresh (spawned) processes that import the application
by name, so a worker cannot inherit the engine, the stores or the settings the parent built.
Instead the parent runs ``serve`` once to check the configuration completely (packs load, the
issuers file reads, the evaluation and replay stores open and create their tables — once, before
any worker races to), then releases all of it and supervises. Each worker runs the same ``serve``
command with the same parameters (passed in :data:`PARAMS_ENV`) up to the point where it would
start uvicorn, and hands the application it built to uvicorn instead. So every option reaches every
worker unchanged, and every worker loads the packs and hot-reloads them on its own (file changes;
a broken pack is refused in each, which keeps its last good packs).

SIGHUP to the parent is passed on to every worker (each reloads in place, keeping its last good
packs), instead of uvicorn's default of replacing the workers — a replacement would load from disk
and could not keep a last good version of a pack broken since. For the same reason a worker that
dies while a pack on disk is broken does not take the service down (uvicorn's supervisor would stop
every worker when the replacement fails to start): the survivors keep serving and the replacement is
retried every few seconds until the pack is fixed (:class:`_Supervisor`).

A worker that dies (killed, crashed, hung) is replaced on its own listening socket, which the parent
keeps open: the connections the kernel queued there meanwhile wait for the replacement and are then
answered. Closing that socket would reset every one of them — a second error for each client that
had just reconnected after losing its connection to the dead worker (issue 19, the kill run).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from socket import socket
from typing import Any

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from cds_engine.service.http_limits import bounded_protocol

__all__ = ["FACTORY", "PARAMS_ENV", "BoundedProtocol", "hand_off", "run_in_worker"]

log = logging.getLogger("cds_engine.service")

PARAMS_ENV = "CDS_SERVE_WORKER_PARAMS"
FACTORY = "cds_engine.commands.serve:worker_app"  # by name: this module does not import serve
WORKER_HEALTHCHECK_SECONDS = 60
RESTART_BACKOFF_SECONDS = 5.0
# uvicorn imports the protocol class by name in each worker (a class made at run time cannot be pickled)
BoundedProtocol = bounded_protocol()
_PATH_TAG = "__path__"
_WORKER_APP: list[Any] = []
_IN_WORKER = False


def hand_off(
    service: Any,
    *,
    workers: int,
    params: dict[str, Any],
    uvicorn_options: dict[str, Any],
    release: Callable[[], None],
) -> bool:
    """Called by ``serve`` with the application it built. True: do not run uvicorn yourself.

    In a worker: keep ``service`` for :func:`run_in_worker` (``release`` runs at exit). In the parent
    with ``workers > 1``: ``release`` what was built only to check the configuration, then start
    and supervise the workers until told to stop.
    """
    if _IN_WORKER:
        _WORKER_APP.append(service)
        atexit.register(release)
        return True
    if workers <= 1:
        return False
    release()
    _supervise(workers, params, uvicorn_options)
    return True


def run_in_worker(command: Any) -> Any:
    """In a worker: run the ``serve`` click ``command`` with the parent's parameters; its application.

    ``cds_engine.commands.serve:worker_app`` (uvicorn's factory, :data:`FACTORY`) calls this.
    """
    global _IN_WORKER
    import typer

    params = json.loads(os.environ[PARAMS_ENV], object_hook=_typed)
    commands = getattr(command, "commands", None)  # one command: typer gives it, not a group
    serve = commands["serve"] if commands else command
    _IN_WORKER = True
    try:
        serve.callback(**params)
    except (Exception, typer.Exit) as exc:  # the supervisor tells a failed start from a crash by this code
        log.error("serve could not start in this worker: %s", type(exc).__name__)
        raise SystemExit(STARTUP_FAILURE) from exc
    if not _WORKER_APP:
        raise RuntimeError("serve did not build an application in this worker")
    return _WORKER_APP.pop()


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, with SIGHUP passed on and a worker that cannot start retried, not fatal.

    uvicorn stops the whole service when a replacement worker fails to start. Here the parent has
    already checked the configuration, so such a failure means the files changed since — most
    likely a pack broken on disk while a worker died. The surviving workers keep serving their last
    good packs; the replacement is retried every :data:`RESTART_BACKOFF_SECONDS` until it starts.

    Listening sockets: see ``__init__``. A dead worker's slot socket stays open and its replacement
    starts on it at once, so connections hashed onto it since the death are kept and answered once
    the replacement accepts (a few seconds: it imports the service and compiles the packs). Only
    when the replacement could not start is the slot closed (its queued connections are reset; with
    the Linux sysctl ``net.ipv4.tcp_migrate_req=1`` the kernel moves them to a live worker's socket
    instead — useful, not required), so that new connections go to the live workers while a pack
    stays broken; the retry opens a fresh socket for the slot.
    """

    def __init__(self, config: Config, sockets: list[socket],
                 slot_sockets: list[socket] | None = None) -> None:
        super().__init__(config, sockets)
        self._retry_at: dict[int, float] = {}  # worker slot -> when to try starting it again
        self._started: dict[int, float] = {}  # id(process) -> when first seen (start-up grace)
        # one SO_REUSEPORT listening socket per worker slot: the kernel spreads new connections over
        # them. With one shared socket, the first worker awake accepts a whole burst of persistent
        # connections (measured: 0/32, 27/5, 3/29 split over two workers) and the other one idles.
        # A slot whose worker died keeps its socket for the replacement, started at once; a slot whose
        # replacement could not start (a pack broken on disk) has its socket closed, so new
        # connections go to the live workers instead of queueing for a worker that may not come back
        # soon.
        self._slot_sockets: list[socket | None] | None = list(slot_sockets) if slot_sockets else None

    def _sockets_for(self, slot: int) -> list[socket]:
        if not self._slot_sockets:
            return self.sockets
        sock = self._slot_sockets[slot]
        if sock is None:
            sock = self._slot_sockets[slot] = _listen_reuseport(self.config, self.config.port)
        return [sock]

    def _close_slot(self, slot: int) -> None:
        if self._slot_sockets and self._slot_sockets[slot] is not None:
            self._slot_sockets[slot].close()  # type: ignore[union-attr]
            self._slot_sockets[slot] = None

    def init_processes(self) -> None:
        for slot in range(self.processes_num):
            process = Process(self.config, self._sockets_for(slot))
            process.start()
            self.processes.append(process)

    def handle_hup(self) -> None:
        log.info("SIGHUP: every worker reloads its rules (a broken pack keeps the last good)")
        for process in self.processes:
            # a worker still starting has no handler yet (SIGHUP would end it); it reads the files anyway
            if process.pid is not None and process.is_ready(timeout=1):
                with suppress(ProcessLookupError):  # it died; keep_subprocess_alive replaces it
                    os.kill(process.pid, signal.SIGHUP)

    def keep_subprocess_alive(self) -> None:
        now = time.monotonic()
        for idx, process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            retry_at = self._retry_at.get(idx)
            if retry_at is None:
                started = self._started.setdefault(id(process), now)
                if process.process.is_alive():
                    # still starting: a ping would block the loop (SIGHUP, other workers) until it answers
                    if now - started < self.config.timeout_worker_healthcheck:
                        continue
                    if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                        continue
                pid = process.pid
                process.kill()  # hung or dead
                process.join()
                _forget_live_gauges(pid)
                self._started.pop(id(process), None)
                if process.exitcode == STARTUP_FAILURE:
                    # not coming back soon: new connections go to the live workers meanwhile
                    self._close_slot(idx)
                    log.error(
                        "a worker could not start (rule packs on disk broken?); the other workers keep "
                        "serving their last good packs; retrying in %.0f s",
                        RESTART_BACKOFF_SECONDS,
                    )
                    self._retry_at[idx] = now + RESTART_BACKOFF_SECONDS
                    continue
                log.warning("worker [%s] died: starting a replacement", process.pid)
            elif now < retry_at:
                continue
            self._retry_at.pop(idx, None)
            # the replacement takes its slot's socket, still open after a death (the connections
            # queued there since are answered once it accepts); a fresh one after a failed start
            replacement = Process(self.config, self._sockets_for(idx))
            replacement.start()
            self.processes[idx] = replacement


def _forget_live_gauges(pid: int | None) -> None:
    """Drop a dead worker's live gauges from the summed /metrics (prometheus-client multiprocess).

    Its journal is adopted and written by the writer of a survivor or of its replacement, whose
    journal-depth gauge then counts those lines: the dead worker's last value, left in the sum,
    would show a backlog that never drains."""
    from cds_engine import metrics

    directory = os.environ.get(metrics.MULTIPROC_ENV)
    if pid is None or not directory:
        return
    from prometheus_client import multiprocess

    with suppress(OSError):
        multiprocess.mark_process_dead(pid, directory)


def _supervise(workers: int, params: dict[str, Any], options: dict[str, Any]) -> None:
    import uvicorn

    os.environ[PARAMS_ENV] = json.dumps(params, default=_plain)
    options = {**options, "http": f"{__name__}:BoundedProtocol"}
    config = uvicorn.Config(
        FACTORY,
        factory=True,
        workers=workers,
        # a spawned worker imports everything and compiles the packs before it can answer the
        # supervisor's ping; on a busy 2-core host that can exceed uvicorn's default 5 s
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
        **options,
    )
    slots = _reuseport_sockets(config, workers)
    sock = slots[0] if slots else config.bind_socket()
    log.info("serving with %d workers (%s)", workers,
             "one SO_REUSEPORT socket each" if slots else "one shared socket")
    try:
        _Supervisor(config, sockets=[sock], slot_sockets=slots).run()
    finally:  # a later serve in this process (a test runner) must not take itself for a worker
        os.environ.pop(PARAMS_ENV, None)


def _reuseport_sockets(config: Config, n: int) -> list[socket]:
    """N listening TCP sockets on the same address with SO_REUSEPORT (Linux); [] where unsupported."""
    import socket as socketlib

    if config.uds or config.fd is not None or not hasattr(socketlib, "SO_REUSEPORT"):
        return []
    out: list[socket] = []
    port = config.port
    try:
        for _ in range(n):
            sock = _listen_reuseport(config, port)
            port = sock.getsockname()[1]  # port 0: the others share the port the first one got
            out.append(sock)
        config.port = port
    except OSError as exc:
        for sock in out:
            sock.close()
        log.warning("SO_REUSEPORT sockets not available (%s): one shared socket", exc)
        return []
    return out


def _plain(value: Any) -> Any:
    """JSON for the parameters: a Path stays a Path in the worker (typer does not convert ``Path | None``)."""
    if isinstance(value, Path):
        return {_PATH_TAG: str(value)}
    raise TypeError(f"serve parameter of type {type(value).__name__} cannot be passed to workers")


def _typed(obj: dict[str, Any]) -> Any:
    return Path(obj[_PATH_TAG]) if set(obj) == {_PATH_TAG} else obj


def _listen_reuseport(config: Config, port: int) -> socket:
    import socket as socketlib

    family = socketlib.AF_INET6 if ":" in config.host else socketlib.AF_INET
    sock = socketlib.socket(family, socketlib.SOCK_STREAM)
    try:
        sock.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_REUSEADDR, 1)
        sock.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_REUSEPORT, 1)
        sock.bind((config.host, port))
        sock.listen(config.backlog)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock
