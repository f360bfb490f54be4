"""Sustained load on a real ``cds-engine serve`` with client authentication on (issue 7, item 1).

Run: ``python bench/load.py [--seconds 60] [--concurrency 32] [--db sqlite,postgresql] [--orders N]
[--client raw|httpx] [--smoke]``.

For each store it starts ``cds-engine serve`` (the real command, uvicorn, default INFO request
log) with a trusted-issuers file this script writes (one ES384 key), then drives order-sign calls
at a fixed concurrency for the given time. Every call carries a freshly signed ES384 JWT (``aud`` =
the URL called, unique ``jti``) and a unique ``hookInstance``; the body is an order-sign for a
Synthea patient with a template-filled prefetch (the same body as ``bench/hook.py``). ``--orders N``
cycles N drafts that differ only in the draft's id (same dose, same cards): the service remembers the
digests of drafts that validated (per worker, up to 4096), so with one draft every call after the
first skips validation — a real EHR sends many different drafts.

``--client raw|httpx``: the load generator's HTTP client. ``httpx`` (asyncio's loop, httpx's pool) or
``raw`` (bench/raw_client.py: a lean HTTP/1.1 client on uvloop, one keep-alive connection per
closed-loop caller, a pool for the open loop; its failures are named as httpx names them). The
generator shares the cores with the server, so its CPU per call is capacity the server loses: raw
spends a small fraction of httpx's (bench/RESULTS.md). Both report the same things.

``--kill`` (with ``--workers 2`` or more): a run that SIGKILLs the busiest worker half-way. Besides the
errors it reports how many connections that worker held and how many errors came on connections
opened after the kill (the reconnects: issue 19 wants none there). The connection a failed call used
is known from a thin wrapper around httpcore's network backend: each read/write tells the calling
task when its connection was opened (one ContextVar set per read/write); the raw client knows it.

Afterwards the server is stopped and the store is read directly: every hookInstance that got a
200 must have exactly one evaluation row for the baclofen pack, and no other hookInstance may
appear (nothing lost, nothing duplicated); the spool must be empty. PostgreSQL uses a fresh
database on the server named by ``CDS_TEST_DATABASE_URL`` (as the tests do), dropped after the run;
``--smoke`` (2 s, concurrency 4) runs SQLite, and PostgreSQL too when that variable is set.

Goals: zero errors, p99 ≤ 500 ms. The load generator shares the machine's cores with the server,
so the figures understate what a dedicated server does. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpcore
import httpx
import psutil
from bench_common import REPO, machine_header, subprocess_env, use_repo_paths

use_repo_paths()

import raw_client  # noqa: E402  (bench/raw_client.py: --client raw)
from hook import realistic_body  # noqa: E402  (same body as the service benchmark)
from tests.service_helpers import Signer, wait_until_up  # noqa: E402

from cds_engine.service.http_limits import CLIENT_KEEP_ALIVE_SECONDS  # noqa: E402

SIGN = "/cds-services/baclofen-order-sign"
LONG_IDLE = 3.0  # s: a request on a connection idle this long nears the server's keep-alive (race)
HOOK_INSTANCE, DRAFT_ID = "__HOOK_INSTANCE__", "__DRAFT_ID__"  # placeholders in the body, filled per call


@dataclass
class Run:
    store: str
    seconds: float
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    ok: list[str] = field(default_factory=list)  # hookInstances answered 200
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    stored_once: int = 0
    missing: int = 0
    duplicated: int = 0
    unexpected: int = 0
    spool_left: int = 0
    mode: str = "closed"  # closed loop at `concurrency`, or open loop at `rate` req/s
    rate: float = 0.0
    workers: int = 1
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds in the timed window, by part
    connections: list[int] = field(default_factory=list)  # established client connections per worker
    writer: list[str] = field(default_factory=list)  # each worker's "store writer at stop" line
    killed_at: float | None = None  # seconds into the run a worker was SIGKILLed
    errors_after_kill: dict[str, int] = field(default_factory=dict)  # errors > 5 s after the kill
    orders: int = 1  # distinct drafts cycled (--orders)
    kill: bool = False  # a worker is SIGKILLed half-way (the kill run)
    kill_clock: float | None = None  # perf_counter() just after the SIGKILL
    killed_connections: int | None = None  # client connections the killed worker held
    opened_after_kill: int = 0  # client connections opened after the kill (reconnects)
    errors_fresh: dict[str, int] = field(default_factory=dict)  # errors on connections opened after it
    errors_unattributed: int = 0  # errors with no connection known (e.g. a pool timeout)
    error_idle: list[float] = field(default_factory=list)  # idle seconds of each failed call's connection
    long_idle: list[float] = field(default_factory=list)  # idle seconds ≥ LONG_IDLE before a request
    client: str = "raw"  # the load generator's HTTP client: httpx or raw (bench/raw_client.py)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the server named by CDS_TEST_DATABASE_URL, dropped afterwards."""
    from store_helpers import postgres_admin_url  # tests/store_helpers.py
    from store_helpers import postgres_database as fresh

    if postgres_admin_url() is None:
        raise SystemExit("bench/load.py: set CDS_TEST_DATABASE_URL for the PostgreSQL run (or --db sqlite)")
    with fresh() as url:
        yield url


@contextmanager
def serve(db_url: str, workdir: Path, signer: Signer,
          workers: int = 1) -> Iterator[tuple[str, subprocess.Popen]]:
    issuers = signer.issuers_file(workdir)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = subprocess_env(CDS_SPOOL_DIR=str(workdir / "spool"), PYTHONUNBUFFERED="1")
    env.pop("CDS_DATABASE_URL", None)
    log = (workdir / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "cds_engine.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--rules", str(REPO / "rules"), "--db", db_url, "--trusted-issuers", str(issuers),
         "--public-url", base, *(["--workers", str(workers)] if workers > 1 else [])],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_until_up(base, process, log=workdir / "server.log")
        while workers > 1 and len(service_workers(process)) < workers:
            time.sleep(0.3)
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


class Tokens:
    """Client JWTs: signed per call, or pre-signed before the timed window (``--presign``, reported)."""

    def __init__(self, signer: Signer, url: str, presign: int = 0) -> None:
        self.signer, self.url = signer, url
        self.presigned = [signer.token(url, exp_in=900) for _ in range(presign)]

    def next(self) -> str:
        return self.presigned.pop() if self.presigned else self.signer.token(self.url)


# ── which connection a call used (kill run) ────────────────────────────────────────────────
# the connection the calling task last read or wrote (a float: only a connect was tried, at that time)
_CONN: contextvars.ContextVar[_OpenedStream | float | None] = contextvars.ContextVar("conn", default=None)


class _OpenedStream(httpcore.AsyncNetworkStream):
    """A connection that tells the task using it which connection it is: a failed call is attributed
    to the connection it failed on (httpx does not say which that was) — when it was opened, and how
    long it had been idle when the call's request was written (a reset on a connection idle as long
    as the server's keep-alive is the client-side keep-alive race, not a server fault)."""

    def __init__(self, stream: httpcore.AsyncNetworkStream, opened: float, long_idle: list[float]) -> None:
        self._stream, self.opened = stream, opened
        self._long_idle = long_idle  # the backend's: idle times ≥ LONG_IDLE s before a request
        self._last_read = opened
        self.idle_before = 0.0  # seconds between the previous answer's last read and this request

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        _CONN.set(self)
        try:
            return await self._stream.read(max_bytes, timeout)
        finally:
            self._last_read = time.perf_counter()

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        _CONN.set(self)
        self.idle_before = time.perf_counter() - self._last_read
        if self.idle_before >= LONG_IDLE:
            self._long_idle.append(self.idle_before)
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(self, *args: object, **kwargs: object) -> httpcore.AsyncNetworkStream:
        return await self._stream.start_tls(*args, **kwargs)  # type: ignore[arg-type]

    def get_extra_info(self, info: str) -> object:
        return self._stream.get_extra_info(info)  # "is_readable": the pool drops a closed idle one


class _OpenedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, with every TCP connection's opening time kept (see _OpenedStream)."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend
        self.opened: list[float] = []
        self.long_idle: list[float] = []  # see _OpenedStream

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: object = None) -> httpcore.AsyncNetworkStream:
        opened = time.perf_counter()
        _CONN.set(opened)  # a connect that fails is a call on a connection opened now
        self.opened.append(opened)
        stream = await self._backend.connect_tcp(host, port, timeout, local_address,
                                                 socket_options)  # type: ignore[arg-type]
        return _OpenedStream(stream, opened, self.long_idle)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: object = None) -> httpcore.AsyncNetworkStream:
        return await self._backend.connect_unix_socket(path, timeout, socket_options)  # type: ignore[arg-type]

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def _client(limits: httpx.Limits) -> tuple[httpx.AsyncClient, _OpenedBackend | None]:
    """The load generator's client, each connection tracked (see :class:`_OpenedStream`).

    httpx has no public hook for httpcore's network backend: the pool's is wrapped in place (if this
    httpx lays its pool out differently, the kill run reports no attribution instead of failing)."""
    transport = httpx.AsyncHTTPTransport(limits=limits)
    backend = None
    pool = getattr(transport, "_pool", None)
    if pool is not None and hasattr(pool, "_network_backend"):
        backend = pool._network_backend = _OpenedBackend(pool._network_backend)
    return httpx.AsyncClient(transport=transport, timeout=30), backend


def draft_ids(orders: int) -> list[str]:
    """The draft ids cycled by ``--orders``: one draft per id, otherwise the same (valid, same cards)."""
    return ["mr-1"] if orders <= 1 else [f"mr-{n + 1}" for n in range(orders)]


class Body:
    """The request body split once at its placeholders, so a call joins bytes instead of scanning the
    58 KiB text twice (``str.replace``) and encoding it: the same bytes as
    ``payload.replace(HOOK_INSTANCE, h).replace(DRAFT_ID, d).encode()`` (tests/test_bench_load_client.py)."""

    def __init__(self, payload: str) -> None:
        pieces = re.split(f"({re.escape(HOOK_INSTANCE)}|{re.escape(DRAFT_ID)})", payload)
        self._parts = [p.encode() for p in pieces]  # placeholders stay in place until filled
        self._hook_slots = [i for i, p in enumerate(pieces) if p == HOOK_INSTANCE]
        self._draft_slots = [i for i, p in enumerate(pieces) if p == DRAFT_ID]

    def parts(self, hook_instance: bytes, draft_id: bytes) -> list[bytes]:
        """The body's parts for one call, in order (write them as they are, or join them)."""
        parts = self._parts.copy()
        for i in self._hook_slots:
            parts[i] = hook_instance
        for i in self._draft_slots:
            parts[i] = draft_id
        return parts


def _note_error(run: Run, key: str, since_start: float, idle: float | None, opened: float | None,
                attributable: bool) -> None:
    """Count a failed call: by kind, after the kill, the idle time of its connection, and (kill run)
    whether it came on a connection opened after the kill — the same bookkeeping for both clients."""
    run.errors[key] = run.errors.get(key, 0) + 1
    if run.killed_at is not None and since_start > run.killed_at + 5:  # reconnected by now
        run.errors_after_kill[key] = run.errors_after_kill.get(key, 0) + 1
    if idle is not None:
        run.error_idle.append(idle)
    if run.kill:
        if opened is None or not attributable:
            run.errors_unattributed += 1
        elif run.kill_clock is not None and opened > run.kill_clock:
            run.errors_fresh[key] = run.errors_fresh.get(key, 0) + 1


async def drive(base: str, payload: str, tokens: Tokens, run: Run, path: str = SIGN) -> None:
    """Closed loop (``run.concurrency`` callers) or open loop (``run.rate`` calls/s on as many connections),
    with the client ``run.client`` names.

    Open-loop latency counts from the moment a call was due, so a stalled server cannot hide its
    queue (no coordinated omission)."""
    if run.client == "raw":
        await _drive_raw(base, payload, tokens, run, path)
        return
    url = base + path
    # idle connections expire before the server's keep-alive closes them (the keep-alive race)
    limits = httpx.Limits(max_connections=run.concurrency, max_keepalive_connections=run.concurrency,
                          keepalive_expiry=CLIENT_KEEP_ALIVE_SECONDS)
    ids = [i.encode() for i in draft_ids(run.orders)]
    body = Body(payload)
    calls = 0
    start = time.perf_counter()
    stop_at = start + run.seconds
    client, backend = _client(limits)
    async with client:

        async def one(due: float) -> None:
            nonlocal calls
            hook_instance = str(uuid.uuid4())
            content = b"".join(body.parts(hook_instance.encode(), ids[calls % len(ids)]))
            calls += 1
            headers = {"content-type": "application/json", "authorization": f"Bearer {tokens.next()}"}
            _CONN.set(None)
            try:
                response = await client.post(url, content=content, headers=headers)
                key = str(response.status_code)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            now = time.perf_counter()
            run.latencies.append(now - due)
            if key == "200":
                run.ok.append(hook_instance)
                return
            conn = _CONN.get()
            stream = conn if isinstance(conn, _OpenedStream) else None
            _note_error(run, key, now - start, stream.idle_before if stream else None,
                        stream.opened if stream else conn, backend is not None)  # type: ignore[arg-type]

        await _loops(run, one, start, stop_at)
        run.elapsed = time.perf_counter() - start
    if backend is not None:
        run.long_idle = backend.long_idle
        if run.kill_clock is not None:
            run.opened_after_kill = sum(1 for t in backend.opened if t > run.kill_clock)


async def _loops(run: Run, one, start: float, stop_at: float) -> None:  # type: ignore[no-untyped-def]
    """The closed loop's callers, or the open loop's schedule (one task per call, due every 1/rate s)."""
    if run.mode == "closed":
        async def caller() -> None:
            while time.perf_counter() < stop_at:
                await one(time.perf_counter())

        await asyncio.gather(*(caller() for _ in range(run.concurrency)))
    else:
        tasks = []
        for n in range(int(run.seconds * run.rate)):
            due = start + n / run.rate
            if (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.gather(*tasks)


def _request_head(base: str, path: str) -> bytes:
    """The request head up to the token: httpx's header names, order and values (only the
    User-Agent differs), so the server parses the same head whichever client sends it."""
    host = base.split("://", 1)[1].split("/", 1)[0]
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
            "Connection: keep-alive\r\nUser-Agent: cds-bench-raw/1\r\ncontent-type: application/json\r\n"
            "authorization: Bearer ").encode()


async def _drive_raw(base: str, payload: str, tokens: Tokens, run: Run, path: str) -> None:
    """:func:`drive` with bench/raw_client.py: the closed loop holds one connection per caller, the
    open loop takes one from a pool of ``run.concurrency``; the same counts as the httpx path."""
    host, port = base.split("://", 1)[1].rsplit(":", 1)
    client = raw_client.RawClient(host, int(port), max_connections=run.concurrency,
                                  keepalive_expiry=CLIENT_KEEP_ALIVE_SECONDS, timeout=30.0,
                                  long_idle_seconds=LONG_IDLE)
    head = _request_head(base, path)
    ids = [i.encode() for i in draft_ids(run.orders)]
    body = Body(payload)
    calls = 0
    start = time.perf_counter()
    stop_at = start + run.seconds
    pooled = run.mode != "closed"
    async with client:

        async def call(due: float, conn: raw_client.Connection | None) -> raw_client.Connection | None:
            """One call; returns the connection a closed-loop caller keeps (None: open loop)."""
            nonlocal calls
            hook_instance = str(uuid.uuid4())
            parts = body.parts(hook_instance.encode(), ids[calls % len(ids)])
            calls += 1
            token = tokens.next().encode()
            length = sum(map(len, parts))
            try:
                conn = await (client.acquire() if pooled else client.held(conn))
                try:
                    status, _ = await client.call(
                        conn, [head, token, b"\r\nContent-Length: %d\r\n\r\n" % length, *parts])
                finally:
                    if pooled:
                        client.release(conn)
                key, failed = str(status), None
            except raw_client.ClientError as exc:
                key, failed = exc.kind, exc
            now = time.perf_counter()
            run.latencies.append(now - due)
            if failed is None:
                if key == "200":
                    run.ok.append(hook_instance)
                    return conn
                used, opened = conn, conn.opened  # an answer, not a 200: on the connection it came on
            else:  # on the connection it failed on; a failed connect: when it was tried; else unknown
                used, opened = failed.conn, failed.opened
            _note_error(run, key, now - start, used.idle_before if used else None, opened, True)
            return conn

        if pooled:
            async def one(due: float) -> None:
                await call(due, None)

            await _loops(run, one, start, stop_at)
        else:
            async def caller() -> None:
                conn = None
                while time.perf_counter() < stop_at:
                    conn = await call(time.perf_counter(), conn)
                if conn is not None:
                    conn.close()

            await asyncio.gather(*(caller() for _ in range(run.concurrency)))
        run.elapsed = time.perf_counter() - start
    run.long_idle = client.long_idle
    if run.kill_clock is not None:
        run.opened_after_kill = sum(1 for t in client.opened if t > run.kill_clock)


def run_drive(base: str, payload: str, tokens: Tokens, run: Run) -> None:
    """:func:`drive` on its event loop: uvloop for the raw client when installed, asyncio's for httpx."""
    if run.client == "raw":
        raw_client.run(lambda: drive(base, payload, tokens, run))
    else:
        asyncio.run(drive(base, payload, tokens, run))


# ── where the CPU goes (from /proc, via psutil) ────────────────────────────────────────────
def _thread_cpu(pid: int, name: str) -> float:
    """CPU seconds of the threads of ``pid`` whose OS name is ``name`` (the writer names its thread)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            if (task / "comm").read_text().strip() != name:
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return total


def _cpu_of(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
        return times.user + times.system
    except psutil.Error:
        return 0.0


def service_workers(server: subprocess.Popen) -> list[psutil.Process]:
    """The processes that serve: ``--workers N`` children holding the listening socket, else the server."""
    parent = psutil.Process(server.pid)
    found = []
    for child in parent.children():
        try:
            if any(c.status == psutil.CONN_LISTEN for c in child.net_connections(kind="tcp")):
                found.append(child)  # not helpers such as multiprocessing's resource tracker
        except psutil.Error:
            continue
    return found or [parent]


def cpu_snapshot(server: subprocess.Popen, db_name: str | None) -> dict[str, dict[int, float]]:
    """CPU seconds so far, per process: service workers, their writer threads, PostgreSQL backends.

    With ``serve --writer process`` the writer is a process of its own in the server's tree (named
    ``cds-writer``): all of its CPU counts as the writer's, none as the workers'.
    """
    workers = service_workers(server)
    out: dict[str, dict[int, float]] = {"workers": {}, "writer": {}, "writer_process": {}, "postgresql": {}}
    for worker in workers:
        out["workers"][worker.pid] = _cpu_of(worker)
        out["writer"][worker.pid] = _thread_cpu(worker.pid, "cds-writer")
    with suppress(psutil.Error):
        for process in psutil.Process(server.pid).children(recursive=True):
            with suppress(psutil.Error):
                if process.name() == "cds-writer":
                    out["writer_process"][process.pid] = _cpu_of(process)
    if db_name:
        for process in psutil.process_iter(["name", "cmdline"]):
            cmdline = " ".join(process.info.get("cmdline") or [])
            if process.info.get("name") == "postgres" and f" {db_name} " in f" {cmdline} ":
                out["postgresql"][process.pid] = _cpu_of(process)
    return out


def cpu_used(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
    """Seconds used between two snapshots (a process that appeared counts from 0)."""
    used = {k: sum(v - before[k].get(pid, 0.0) for pid, v in after[k].items()) for k in after}
    used["workers"] -= used["writer"]  # the writer thread is inside the workers: counted on its own
    used["writer"] += used.pop("writer_process")  # a writer process is outside them
    return used


def connection_split(server: subprocess.Popen, port: int) -> list[int]:
    """Established client connections on the service port, per worker process."""
    split = []
    for worker in service_workers(server):
        try:
            conns = worker.net_connections(kind="tcp")
        except psutil.Error:
            continue
        split.append(sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port))
    return split


def check_store(db_url: str, workdir: Path, run: Run) -> None:
    """Every 200 stored exactly once (baclofen pack, hook source), nothing else, spool empty."""
    from sqlalchemy import create_engine, func, select

    from cds_engine.store.models import Evaluation

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(Evaluation.hook_instance, func.count())
                .where(Evaluation.source == "hook", Evaluation.pack_id == "baclofen")
                .group_by(Evaluation.hook_instance)
            ).all()
    finally:
        engine.dispose()
    counts = {h: n for h, n in rows}
    answered = set(run.ok)
    run.stored_once = sum(1 for h in answered if counts.get(h) == 1)
    run.missing = sum(1 for h in answered if h not in counts)
    run.duplicated = sum(1 for n in counts.values() if n > 1)
    run.unexpected = sum(1 for h in counts if h not in answered)
    spool = workdir / "spool"
    # lines not stored: journal segments, spool files, rejected lines (not the writer's lock and status)
    kept = ("journal-*.jsonl", "spool-*.jsonl", "drain-*.jsonl", "rejected.jsonl")
    run.spool_left = sum(1 for pattern in kept for p in spool.rglob(pattern)) if spool.exists() else 0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000 if ordered else float("nan")


def one_run(store: str, payload: str, run: Run, warm_seconds: float = 3, presign: bool = False,
            kill: bool = False) -> Run:
    """One fresh server (``run.workers`` workers) and store; the timed window; then the store checked."""
    import threading

    run.kill = kill
    signer = Signer(issuer="https://ehr.load.example")
    with tempfile.TemporaryDirectory(prefix="cds-load-") as tmp:
        workdir = Path(tmp)

        def go(db_url: str, db_name: str | None) -> None:
            with serve(db_url, workdir, signer, run.workers) as (base, server):
                port = int(base.rsplit(":", 1)[1])
                warm = Run(store=store, seconds=warm_seconds, concurrency=4, orders=run.orders,
                           client=run.client)
                run_drive(base, payload, Tokens(signer, base + SIGN), warm)
                expected = int(run.seconds * (run.rate or 300) * 1.2) if presign else 0
                tokens = Tokens(signer, base + SIGN, expected)  # signed before the timed window
                generator = psutil.Process()
                before, gen_before = cpu_snapshot(server, db_name), _cpu_of(generator)

                def middle() -> None:  # connection split at mid-run; then the kill, if asked
                    time.sleep(run.seconds / 2)
                    run.connections = connection_split(server, port)
                    if kill:
                        workers = service_workers(server)  # the busiest: its connections see the kill
                        victim = workers[run.connections.index(max(run.connections))] if len(
                            run.connections) == len(workers) else workers[0]
                        victim.kill()
                        run.kill_clock = time.perf_counter()
                        run.killed_at = run.seconds / 2
                        if len(run.connections) == len(workers):
                            run.killed_connections = run.connections[workers.index(victim)]

                sampler = threading.Thread(target=middle, daemon=True)
                sampler.start()
                run_drive(base, payload, tokens, run)
                after, gen_after = cpu_snapshot(server, db_name), _cpu_of(generator)
                run.cpu = cpu_used(before, after)
                run.cpu["generator"] = gen_after - gen_before
                sampler.join()
                time.sleep(1)
            run.ok.extend(warm.ok)  # warm-up calls are stored too
            check_store(db_url, workdir, run)
            text = (workdir / "server.log").read_text()
            run.writer = re.findall(r"store writer at stop: (\{.*\})", text)
            if "Traceback" in text:
                run.errors["server traceback"] = 1
                first = text.index("Traceback")
                print(f"{store} {run.mode}: first server traceback:\n{text[first:first + 4000]}",
                      file=sys.stderr)

        if store == "sqlite":
            go(f"sqlite:///{workdir}/load.db", None)
        else:
            with postgres_database() as url:
                go(url, url.rsplit("/", 1)[1].split("?")[0])
    return run


@contextmanager
def null_endpoint(port: int | None = None) -> Iterator[str]:
    """A null endpoint (:func:`null_serve`) in its own process, up and answering; yields its base URL."""
    port = _free_port() if port is None else port
    server = subprocess.Popen([sys.executable, __file__, "--null-serve", str(port)], env=subprocess_env())
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(base + "/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("null endpoint did not start") from None
                time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(10)


def null_harness(payload: str, seconds: float, concurrency: int,
                 client: str = "raw") -> tuple[float, float]:
    """Requests/s the load generator reaches against an endpoint that does nothing (same JWTs, body),
    and the generator's CPU milliseconds per request there (this process's CPU over the run)."""
    with null_endpoint() as base:
        run = Run(store="null", seconds=seconds, concurrency=concurrency, client=client)
        tokens = Tokens(Signer(), base + SIGN)
        cpu = time.process_time()
        run_drive(base, payload, tokens, run)
        cpu = time.process_time() - cpu
        if run.errors:
            print(f"null endpoint: errors {run.errors}", file=sys.stderr)
        return len(run.latencies) / run.elapsed, cpu * 1000 / max(1, len(run.latencies))


def null_serve(port: int) -> None:
    """An ASGI app that reads the body and answers ``{"cards": []}``: the harness's ceiling."""
    import uvicorn

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"cards":[]}'})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _lag_p99(run: Run) -> str:
    import ast

    values = [ast.literal_eval(line).get("lag_ms_p99") for line in run.writer]
    values = [v for v in values if v is not None]
    return f"{max(values):.0f}" if values else "–"


def _client_text(client: str) -> str:
    if client == "raw":
        return (f"bench/raw_client.py (a lean HTTP/1.1 client, {raw_client.loop_name()}), one event loop, "
                "one keep-alive connection per closed-loop caller (open loop: a pool)")
    return "httpx, one event loop (asyncio's), persistent connections"


def report(runs: list[Run], body_kib: int, resources: int, harness: tuple[float, float] | None,
           presign: bool) -> str:
    first = runs[0]
    lines = [
        "## Load (bench/load.py)\n",
        f"Run: `python bench/load.py --seconds {first.seconds:g} --workers {first.workers}"
        f" --client {first.client}"
        f"{' --presign' if presign else ''}{f' --orders {first.orders}' if first.orders > 1 else ''}"
        f" ...`. The real `cds-engine serve` ({first.workers} worker(s), "
        "INFO request log, evaluations through the journal and the group-commit writer) with client "
        "authentication on: a trusted-issuers file with one ES384 key; every call carries an ES384 JWT "
        "(aud = the URL, unique jti"
        + (", **pre-signed before the timed window**" if presign else ", signed during the run")
        + f") and a unique hookInstance. Body: order-sign for a Synthea patient, {resources} prefetched "
        f"resources + 1 draft baclofen order, {body_kib} KiB; "
        + (f"{first.orders} distinct drafts cycled (their ids differ)" if first.orders > 1
           else "the same draft every call (the service's draft-validation memo always hits)")
        + f". Client: {_client_text(first.client)}.\n",
        f"Machine: `nproc` = {os.cpu_count()}, {platform.machine()}, Python {platform.python_version()}. "
        "**The load generator shares the cores with the server and PostgreSQL.**\n",
    ]
    if harness is not None:
        lines.append(f"Harness against a null endpoint (same client, JWTs and body): {harness[0]:.0f} req/s, "
                     f"generator CPU {harness[1]:.2f} ms per request.\n")
    lines += [
        "| store | mode | req/s | p50 ms | p99 ms | errors | stored once | missing | dup | left | "
        "CPU ms/answer: workers · writer · PostgreSQL · generator | connections per worker "
        "| write lag p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in runs:
        n = len(r.latencies)
        errors = sum(r.errors.values())
        detail = f" ({', '.join(f'{k}: {v}' for k, v in r.errors.items())})" if errors else ""
        if r.error_idle and r.killed_at is None:
            detail += f" on connections idle {', '.join(f'{t:.2f}' for t in sorted(r.error_idle))} s before"
        if r.long_idle:
            detail += (f"; {len(r.long_idle)} requests on connections idle ≥ {LONG_IDLE:g} s "
                       f"(longest {max(r.long_idle):.1f} s)")
        answered = max(1, len(r.ok))
        cpu = " · ".join(f"{r.cpu.get(k, 0.0) * 1000 / answered:.1f}"
                         for k in ("workers", "writer", "postgresql", "generator"))
        mode = f"closed c{r.concurrency}" if r.mode == "closed" else f"open {r.rate:g}/s"
        if r.killed_at is not None:
            after = sum(r.errors_after_kill.values())
            held = "?" if r.killed_connections is None else r.killed_connections
            fresh = sum(r.errors_fresh.values())
            fresh_detail = f" ({', '.join(f'{k}: {v}' for k, v in r.errors_fresh.items())})" if fresh else ""
            mode += (f", worker SIGKILLed at {r.killed_at:.0f} s holding {held} connections; "
                     f"{fresh} errors{fresh_detail} on the {r.opened_after_kill} connections opened after it"
                     f"{f', {r.errors_unattributed} unattributed' if r.errors_unattributed else ''}; "
                     f"{after} errors > 5 s after")
        lines.append(
            f"| {r.store} | {mode} | {n / r.elapsed:.0f} | {_pct(r.latencies, 0.5):.0f} | "
            f"{_pct(r.latencies, 0.99):.0f} | {errors}{detail} | {r.stored_once}/{len(r.ok)} | {r.missing} | "
            f"{r.duplicated} | {r.spool_left} | {cpu} | {'/'.join(map(str, r.connections)) or '–'} | "
            f"{_lag_p99(r)} |"
        )
    lines.append(
        "\n'stored once': hookInstances answered 200 (warm-up included) with exactly one evaluation row "
        "for the pack, counted in the database after the server stopped; 'left': journal, spool or rejected "
        "files left in the spool directory (lines not stored); rows for hookInstances never answered 200: "
        f"{', '.join(str(r.unexpected) for r in runs)}. CPU from /proc over the timed window, per "
        "answered call (the writer thread is named `cds-writer`; PostgreSQL: the backends of the run's "
        "database). Goals (issue 19): closed c32 ≥ 200 req/s, 0 errors; open 150/s p99 ≤ 250 ms; "
        "write lag p99 ≤ 2 s."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--db", default="sqlite,postgresql", help="comma list: sqlite, postgresql")
    parser.add_argument("--workers", type=int, default=1, help="serve --workers N")
    parser.add_argument("--open-rate", type=float, default=0.0, help="also an open-loop run at this req/s")
    parser.add_argument("--runs", type=int, default=1, help="repeat each run (report them all; take medians)")
    parser.add_argument("--presign", action="store_true", help="sign the JWTs before the timed window")
    parser.add_argument("--kill", action="store_true", help="also a closed-loop run that SIGKILLs a worker")
    parser.add_argument("--orders", type=int, default=1,
                        help="cycle N distinct drafts (ids differ) so the service's draft-validation memo "
                             "(4096 per worker) does not always hit; 1: the same draft every call")
    parser.add_argument("--null", action="store_true", help="also measure the harness on a null endpoint")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="the load generator's HTTP client: httpx, or raw (bench/raw_client.py: a lean "
                             "HTTP/1.1 client on uvloop, a fraction of httpx's CPU per call)")
    parser.add_argument("--null-serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="2 s, concurrency 4 (PostgreSQL if configured)")
    args = parser.parse_args()
    if args.null_serve:
        null_serve(args.null_serve)
        return
    if args.smoke:
        from store_helpers import postgres_admin_url

        args.seconds, args.concurrency = 2, 4
        args.db = "sqlite,postgresql" if postgres_admin_url() else "sqlite"
    if args.orders < 1:
        parser.error("--orders must be at least 1")
    print(machine_header("bench/load.py", args.smoke))
    print(f"drafts: {args.orders} distinct (--orders)")
    body, resources = realistic_body()
    body["hookInstance"] = HOOK_INSTANCE
    drafts = body["context"]["draftOrders"]["entry"]
    assert len(drafts) == 1 and json.dumps(body).count(json.dumps(drafts[0]["resource"]["id"])) == 1
    drafts[0]["resource"]["id"] = DRAFT_ID
    payload = json.dumps(body)
    harness = null_harness(payload, args.seconds, args.concurrency, args.client) if args.null else None
    warm = 0.5 if args.smoke else 3
    runs = []
    for store in [s.strip() for s in args.db.split(",")]:
        plans = [Run(store=store, seconds=args.seconds, concurrency=args.concurrency, workers=args.workers,
                     orders=args.orders, client=args.client)]
        if args.open_rate:
            plans.append(Run(store=store, seconds=args.seconds, concurrency=args.concurrency,
                             workers=args.workers, mode="open", rate=args.open_rate, orders=args.orders,
                             client=args.client))
        for _ in range(args.runs):
            for plan in plans:
                run = Run(**{**plan.__dict__, "latencies": [], "ok": [], "errors": {},
                                "errors_after_kill": {}, "errors_fresh": {}, "error_idle": [],
                                "long_idle": []})
                one_run(store, payload, run, warm, args.presign)
                print(f"{store} {run.mode}: {len(run.latencies)} requests, errors {run.errors}",
                      file=sys.stderr)
                runs.append(run)
        if args.kill and args.workers > 1:
            run = Run(store=store, seconds=args.seconds, concurrency=args.concurrency, workers=args.workers,
                      orders=args.orders, client=args.client)
            runs.append(one_run(store, payload, run, warm, args.presign, kill=True))
    print(report(runs, len(payload) // 1024, resources, harness, args.presign))


if __name__ == "__main__":
    main()
