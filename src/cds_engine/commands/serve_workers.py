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

A spare worker (issue 19, item 4) makes that wait short. A replacement started from nothing imports
the service and compiles the packs: ~3.5 CPU-s, ~9 s on a busy 2-core host, while clinicians at
order entry wait on the dead slot's queue. So the parent keeps one spare worker per host, fully
started (packs compiled, application start-up run, warm) but listening on no socket. When a worker
dies the parent passes the dead slot's socket to the spare over a Unix socket pair (SCM_RIGHTS); the
spare brings its packs up to date (:meth:`~cds_engine.service.reload.EngineHolder.refresh`: a reload
under way is waited for, files changed since its last look are reloaded, a broken pack is refused
and the last good kept — the state every surviving worker is in) and accepts at once; a new spare is
then started behind it. Chosen over a template process that forks workers: the template would have
to stay free of threads, event loops and database connections at every fork (the reload watcher,
the store and the evaluation pool all start threads while ``serve`` builds the service), and
``serve`` would have to be split in two; the spare reuses the worker as it is, for the memory of one
more worker (measured: ~210 MB RSS, ~170 MB of it unshared). The spare gets SIGHUP like the workers
(deferred until it is started: before that SIGHUP would end it) and watches the files itself; it
answers nothing, so it shows in no ``/healthz``, and what it writes to the metrics directory before
taking over is zeros (measured: one journal-depth gauge at 0 with ``--writer thread``; its live gauge
is dropped when it dies, like a worker's). A dead worker's journal is
the writer's to adopt (it takes a segment as soon as its lock is free), whichever process replaces
the worker. A spare that cannot start (a pack broken on disk) is retried with a growing delay; until
one is ready, a dead worker is replaced from nothing as before. ``serve --workers 1`` has no spare
(and no supervisor); ``CDS_SERVE_SPARE=0`` turns it off (:data:`SPARE_ENV`).

Every worker and the spare freeze what start-up made (``gc.freeze``, once the application has
started) so the garbage collector's full passes no longer walk it: unfrozen, one every ~1,000 calls
held the GIL ~110-150 ms (:mod:`cds_engine.service.heap`, which also refreezes after a reload).

A worker stopped by SIGTERM runs ``serve``'s release (the store closed, the reload watcher stopped)
before it ends by that signal: uvicorn re-raises the signal after its graceful shutdown, which with
the default handler ended the process before ``atexit`` ran (:class:`_Worker`).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import pickle
import signal
import socket as socketlib
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from socket import socket
from typing import Any

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.server import Server
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from cds_engine.commands.stop_signal import StopSignal, end_by, raise_stop_signal
from cds_engine.service.http_limits import bounded_protocol

__all__ = ["FACTORY", "PARAMS_ENV", "BoundedProtocol", "hand_off", "run_in_worker"]

log = logging.getLogger("cds_engine.service")

PARAMS_ENV = "CDS_SERVE_WORKER_PARAMS"
FACTORY = "cds_engine.commands.serve:worker_app"  # by name: this module does not import serve
WORKER_HEALTHCHECK_SECONDS = 60
RESTART_BACKOFF_SECONDS = 5.0
SPARE_ENV = "CDS_SERVE_SPARE"  # "0": no spare worker (a host short of memory; one worker's RSS saved)
SPARE_BACKOFF_MAX_SECONDS = 60.0  # a spare that cannot start (pack broken) costs a whole start each try
_READY = b"R"  # spare -> parent: started, waiting for a slot
_TAKE = b"T"  # parent -> spare: this slot's listening socket is yours (with the descriptor)
# uvicorn imports the protocol class by name in each worker (a class made at run time cannot be pickled)
BoundedProtocol = bounded_protocol()
_PATH_TAG = "__path__"
_WORKER_APP: list[Any] = []
_RELEASES: list[Callable[[], None]] = []  # serve's release in this worker (also at exit)
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
        _RELEASES.append(release)
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


def _release_all() -> None:
    """Run the releases :func:`hand_off` registered (once: taken off ``atexit``)."""
    released = bool(_RELEASES)
    while _RELEASES:
        release = _RELEASES.pop()
        atexit.unregister(release)
        try:
            release()
        except Exception:  # the process is ending: say so, and end anyway
            log.exception("serve's release failed in this worker")
            released = False
    if released:
        log.info("worker [%d] closed what serve opened (store, rule watcher) before ending", os.getpid())


def run_until_stopped(run: Callable[[], None]) -> None:
    """``run()``; a SIGTERM meanwhile ends the process by SIGTERM only after :func:`_release_all`."""
    signal.signal(signal.SIGTERM, raise_stop_signal)
    try:
        run()
    except StopSignal as stop:
        _release_all()
        end_by(stop)


class _FrozenServer(Server):
    """uvicorn's server in a worker, with start-up's objects frozen once it has started
    (:func:`cds_engine.service.heap.freeze_startup`: no collection walks them again)."""

    async def startup(self, sockets: list[socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            _freeze("worker")


def _freeze(what: str) -> None:
    from cds_engine.service.heap import freeze_startup

    log.info("%s [%d]: %d start-up objects frozen (out of the garbage collector's passes)",
             what, os.getpid(), freeze_startup())


class _Worker(Process):
    """uvicorn's worker process, with ``serve``'s release run before a SIGTERM ends it, a
    health ping that returns as soon as the worker dies, and start-up's objects frozen."""

    @property
    def server(self) -> Server:
        if self._server is None:
            self._server = _FrozenServer(self.config)
        return self._server

    def target(self, sockets: list[socket] | None = None) -> None:  # in the worker
        run_until_stopped(lambda: Process.target(self, sockets))

    def _healthcheck(self, timeout: float) -> bool | None:
        """The worker's startup flag, or None if it does not answer within ``timeout`` or ends first.

        uvicorn waits for the answer alone, for up to the health-check timeout (60 s here): the
        parent holds the child's end of the pipe too, so a worker that dies between the ping and
        its answer left the supervisor blocked for the whole timeout — no replacement, no spare
        taking over, every other worker unchecked. Measured in the kill run on a loaded 2-core host
        (load 17; the answer thread of a busy worker takes long to be scheduled): 60 s from the
        kill to the first answer on the dead slot, with a spare ready. The process's sentinel ends
        the wait at its death."""
        try:
            self.parent_conn.send(b"ping")
            answered = mp_wait([self.parent_conn, self.process.sentinel], timeout)
            if self.parent_conn in answered:
                started: bool = self.parent_conn.recv()
                return started
            return None
        except (OSError, EOFError, pickle.UnpicklingError):
            return None


class _Started:
    """A lifespan whose start-up has already run: uvicorn's ``startup`` is entered a second time
    when the spare takes a slot, and must then only open the listener."""

    def __init__(self, lifespan: Any) -> None:
        self._lifespan = lifespan

    async def startup(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:  # should_exit, state, shutdown
        return getattr(self._lifespan, name)


class _SpareServer(_FrozenServer):
    """uvicorn's server in a spare: the application starts (start-up's objects frozen), then waits
    for a slot's socket (what a reload of packs edited since made is frozen after it takes it)."""

    def __init__(self, config: Config, control: socket) -> None:
        super().__init__(config)
        self._control = control

    async def startup(self, sockets: list[socket] | None = None) -> None:
        lifespan = self.lifespan
        await lifespan.startup()  # warm: validators, every pack's evaluator in every pool thread
        if lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        _freeze("spare worker")
        slot = await self._wait_for_slot()
        if slot is None:  # stopped (SIGTERM) or the parent is gone: never served, end quietly
            await lifespan.shutdown()
            self.should_exit = True
            return
        _current_rules()
        self.lifespan = _Started(lifespan)
        try:
            await super().startup(sockets=[slot])
        finally:
            self.lifespan = lifespan
        log.info("spare worker [%d] took over a worker slot", os.getpid())

    async def _wait_for_slot(self) -> socket | None:
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(self._control.fileno(), ready)
        try:
            try:
                self._control.sendall(_READY)
            except OSError:  # the parent closed its end (it is stopping): no slot will come
                return None
            while not readable.done():
                if self.should_exit:
                    return None
                await asyncio.wait([readable], timeout=0.1)
        finally:
            loop.remove_reader(self._control.fileno())
        message, fds, _flags, _address = socketlib.recv_fds(self._control, 16, 1)
        self._control.close()
        if message != _TAKE or not fds:
            for fd in fds:
                os.close(fd)
            return None
        return socketlib.socket(fileno=fds[0])


def _current_rules() -> None:
    """In a spare about to serve: its packs as current as a live worker's, or no answer at all."""
    from cds_engine.service.reload import sighup_holder

    holder = sighup_holder()
    if holder is None:  # cannot tell its packs are current: refuse to serve (the parent replaces it)
        log.error("spare worker: no rule holder found; not taking the slot")
        sys.exit(STARTUP_FAILURE)
    holder.refresh("spare taking a worker slot")


class _SpareProcess(_Worker):
    """A worker started ahead, listening on nothing until :meth:`take_over` hands it a slot."""

    def __init__(self, config: Config) -> None:
        self._control, self._child_control = socketlib.socketpair()
        self.ready = False
        self.announced = False  # its readiness logged (parent's bookkeeping)
        self.hup_pending = False
        super().__init__(config, [])

    def __getstate__(self) -> dict[str, Any]:
        """What the spawned child gets: its end of the socket pair, not the parent's (EOF = parent gone)."""
        state = dict(self.__dict__)
        state["_control"] = None
        return state

    @property
    def server(self) -> Server:
        if self._server is None:
            self._server = _SpareServer(self.config, self._child_control)
        return self._server

    def start(self) -> None:
        super().start()
        self._child_control.close()

    def poll_ready(self) -> bool:
        """Has it said it is started (without waiting)?"""
        if not self.ready and self._control.fileno() >= 0:
            with suppress(BlockingIOError, InterruptedError):
                self.ready = self._control.recv(16, socketlib.MSG_DONTWAIT) == _READY
        return self.ready

    def take_over(self, sock: socket) -> bool:
        """Hand it ``sock`` (a slot's listening socket; the parent keeps its own copy)."""
        try:
            socketlib.send_fds(self._control, [_TAKE], [sock.fileno()])
        except OSError as exc:
            log.warning("could not hand a slot to the spare worker [%s]: %s", self.pid, exc)
            return False
        finally:
            self._control.close()
        return True

    def terminate(self) -> None:
        self._control.close()
        super().terminate()

    def kill(self) -> None:
        self._control.close()
        super().kill()


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, with SIGHUP passed on, a spare worker kept ready to take a dead worker's
    place (module docstring), and a worker that cannot start retried, not fatal.

    uvicorn stops the whole service when a replacement worker fails to start. Here the parent has
    already checked the configuration, so such a failure means the files changed since — most
    likely a pack broken on disk while a worker died. The surviving workers keep serving their last
    good packs; the replacement is retried every :data:`RESTART_BACKOFF_SECONDS` until it starts.

    Listening sockets: see ``__init__``. A dead worker's slot socket stays open and is handed to the
    ready spare (answering within about a second); without one a replacement starts on it at once.
    Either way connections hashed onto it since the death are kept and answered once the spare or
    the replacement accepts (a replacement: a few seconds, it imports the service and compiles the
    packs). Only
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
        # the spare worker (module docstring): started once every worker has been seen ready
        self._spare: _SpareProcess | None = None
        self._spare_at = 0.0  # when to start the next spare
        self._spare_failures = 0
        self._spare_wanted = os.environ.get(SPARE_ENV, "1").strip().lower() not in ("0", "no", "off", "false")
        self._seen_ready: set[int] = set()  # id(process) of workers that answered ready once

    def _sockets_for(self, slot: int) -> list[socket]:
        if not self._slot_sockets:
            return self.sockets
        while slot >= len(self._slot_sockets):  # a slot added by SIGTTIN
            self._slot_sockets.append(None)
        sock = self._slot_sockets[slot]
        if sock is None:
            sock = self._slot_sockets[slot] = _listen_reuseport(self.config, self._port())
        return [sock]

    def _port(self) -> int:
        """The port every slot listens on (``--port 0``: the one the first socket was given)."""
        for sock in self._slot_sockets or ():
            if sock is not None:
                return int(sock.getsockname()[1])
        return int(self.config.port)

    def handle_ttin(self) -> None:
        """SIGTTIN: one more worker, on a slot socket of its own, as every worker (uvicorn's own would
        start a plain process on the first slot's socket: not frozen, no release before SIGTERM, and a
        slot index with no socket when it died — the supervisor loop would fail)."""
        slot = len(self.processes)
        log.info("SIGTTIN: starting worker slot %d", slot)
        process = _Worker(self.config, self._sockets_for(slot))
        process.start()
        self.processes.append(process)
        self.processes_num = len(self.processes)

    def handle_ttou(self) -> None:
        """SIGTTOU: one worker fewer (never the last). The slot's socket is closed in this process first
        (the worker keeps accepting on its copy until it stops), so no new connection is hashed onto a
        socket nobody will accept from once it has gone."""
        if len(self.processes) <= 1:
            log.info("SIGTTOU: one worker left, not stopping it")
            return
        slot = len(self.processes) - 1
        process = self.processes.pop()
        self.processes_num = len(self.processes)
        log.info("SIGTTOU: stopping worker slot %d [%s]", slot, process.pid)
        self._close_slot(slot)
        if self._slot_sockets is not None:
            del self._slot_sockets[slot:]
        self._retry_at.pop(slot, None)
        self._started.pop(id(process), None)
        self._seen_ready.discard(id(process))
        process.terminate()
        process.join()
        _forget_live_gauges(process.pid)

    def _close_slot(self, slot: int) -> None:
        if self._slot_sockets and self._slot_sockets[slot] is not None:
            self._slot_sockets[slot].close()  # type: ignore[union-attr]
            self._slot_sockets[slot] = None

    def init_processes(self) -> None:
        for slot in range(self.processes_num):
            process = _Worker(self.config, self._sockets_for(slot))
            process.start()
            self.processes.append(process)

    def terminate_all(self) -> None:
        super().terminate_all()
        if self._spare is not None:
            self._spare.terminate()

    def join_all(self) -> None:
        super().join_all()
        if self._spare is not None:
            self._spare.join()

    def handle_hup(self) -> None:
        log.info("SIGHUP: every worker reloads its rules (a broken pack keeps the last good)")
        for process in self.processes:
            # a worker still starting has no handler yet (SIGHUP would end it); it reads the files anyway
            if process.pid is not None and process.is_ready(timeout=1):
                with suppress(ProcessLookupError):  # it died; keep_subprocess_alive replaces it
                    os.kill(process.pid, signal.SIGHUP)
        if self._spare is not None:  # sent once it has said it is started (its handler is in place)
            self._spare.hup_pending = True
            self._keep_spare(time.monotonic())

    def _keep_spare(self, now: float) -> None:
        """Start the spare, pass it a deferred SIGHUP, or notice it died (retried with a growing delay)."""
        spare = self._spare
        if spare is None:
            if (self._spare_wanted and now >= self._spare_at and not self.should_exit.is_set()
                    and self._workers_ready()):
                self._spare = _SpareProcess(self.config)
                self._spare.start()
                log.info("spare worker [%s] starting", self._spare.pid)
            return
        if spare.process.is_alive():
            if spare.poll_ready():
                if not spare.announced:
                    spare.announced = True
                    self._spare_failures = 0
                    log.info("spare worker [%s] ready", spare.pid)
                if spare.hup_pending:
                    spare.hup_pending = False
                    with suppress(ProcessLookupError):
                        os.kill(spare.pid, signal.SIGHUP)  # type: ignore[arg-type]
            return
        spare.join()
        _forget_live_gauges(spare.pid)
        self._spare = None
        if self.should_exit.is_set():
            return
        self._spare_failures += 1
        delay = min(RESTART_BACKOFF_SECONDS * 2 ** (self._spare_failures - 1), SPARE_BACKOFF_MAX_SECONDS)
        self._spare_at = now + delay
        log.error("the spare worker [%s] ended (exit code %s; rule packs on disk broken?): another in %.0f s",
                  spare.pid, spare.exitcode, delay)

    def _workers_ready(self) -> bool:
        """Has every worker answered ready once? (The spare does not compete with their start.)"""
        for process in self.processes:
            if id(process) in self._seen_ready:
                continue
            if not process.process.is_alive() or not process.is_ready(timeout=0.5):
                return False
            self._seen_ready.add(id(process))
        return True

    def _take_spare(self, slot: int, dead: int | None = None) -> bool:
        """Put the ready spare in ``slot``'s place (on the slot's socket); a new spare follows."""
        spare = self._spare
        if spare is None or not spare.process.is_alive() or not spare.poll_ready():
            return False
        self._spare = None
        self._spare_at = 0.0
        if not spare.take_over(self._sockets_for(slot)[0]):
            spare.terminate()
            spare.join()
            return False
        # the next spare starts once this one answers (ready is seen): it does not take the CPU
        # from a take-over that must reload packs edited since (as long as a start on a busy host)
        self.processes[slot] = spare
        log.warning("spare worker [%s] took over worker slot %d%s; starting a new spare", spare.pid, slot,
                    f" (worker [{dead}] died)" if dead else "")
        return True

    def keep_subprocess_alive(self) -> None:
        now = time.monotonic()
        self._keep_spare(now)
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
                self._seen_ready.discard(id(process))
                if self._take_spare(idx, pid):  # answers within about a second (module docstring)
                    continue
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
            if self._take_spare(idx):
                continue
            # the replacement takes its slot's socket, still open after a death (the connections
            # queued there since are answered once it accepts); a fresh one after a failed start
            replacement = _Worker(self.config, self._sockets_for(idx))
            replacement.start()
            self.processes[idx] = replacement
        self._keep_spare(now)  # a new spare behind one that took a slot


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
