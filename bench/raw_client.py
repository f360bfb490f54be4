"""A lean HTTP/1.1 client for ``bench/load.py --client raw`` (issue 19, item 3).

Why it exists: the load generator shares the two cores with the server and PostgreSQL, and httpx
(its request/response models, httpcore's pool and h11 state machine, anyio) costs ~3.5 ms of CPU per
call on the issue's machine — a third of what 200 req/s leaves for everything. This client does only
what the bench needs: one asyncio :class:`asyncio.Protocol` per TCP connection, the request written
from pre-encoded parts (only the token and the body's two placeholders vary), the response's status
line and headers parsed once, a ``content-length`` body read to its length (a ``chunked`` one — what
uvicorn sends when the app gives no length, as the null endpoint does — decoded; neither: read to
EOF), nothing else.

What a failure is called mirrors httpx so the bench's error keys keep their meaning
(:class:`ClientError.kind`):

* connect refused / unreachable → ``ConnectError``; no connection within the timeout → ``ConnectTimeout``;
* the write fails (the socket was already reset) → ``WriteError``;
* a reset (``ECONNRESET``) before the answer was complete → ``ReadError`` (httpcore maps it so);
* a clean EOF before the status line → ``RemoteProtocolError`` ("Server disconnected without sending
  a response"), before the end of a length-delimited or chunked body → ``RemoteProtocolError``
  (h11's "peer closed connection without sending complete message body"), a response that is not
  HTTP/1.x → ``RemoteProtocolError``;
* no byte for ``timeout`` seconds while an answer is awaited → ``ReadTimeout`` (httpx's read
  timeout is per read; a watchdog checks once a second); no pool slot within it → ``PoolTimeout``.

Connection reuse follows httpcore's rules: a connection the server closed while it was idle is
dropped before reuse (no error, as httpcore's readable-socket check does), and one idle longer than
``keepalive_expiry`` is closed and replaced (the client closes idle connections before the server's
keep-alive does: the keep-alive race). A call that fails on a connection is not retried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

_perf = time.perf_counter
_MAX_HEAD = 64 * 1024  # a response head longer than this is not an answer from our server


class ClientError(Exception):
    """A failed call; ``kind`` is the name of the httpx exception for the same failure.

    ``conn`` is the connection it failed on (``None``: none was involved, e.g. a pool timeout);
    ``opened`` is when that connection was opened, or when the failed connect was tried."""

    def __init__(self, kind: str, conn: Connection | None = None, opened: float | None = None) -> None:
        super().__init__(kind)
        self.kind, self.conn = kind, conn
        self.opened = conn.opened if conn is not None else opened


class Connection(asyncio.Protocol):
    """One keep-alive TCP connection carrying one call at a time (HTTP/1.1, no pipelining).

    ``opened``: when the connect started; ``last_read``: the last time bytes arrived (or ``opened``);
    ``idle_before``: seconds between the previous answer's last read and this call's request — what
    the bench reports for a failed call (a reset after seconds of idle is the keep-alive race)."""

    def __init__(self, opened: float) -> None:
        self.opened = self.last_read = opened
        self.idle_before = 0.0
        self.transport: asyncio.Transport | None = None
        self.closed = False  # EOF or reset seen, or closed by us: never reused
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._buf = bytearray()
        self._status = 0
        self._length = -1  # body bytes expected; -1: head not parsed yet; -2: chunked; -3: until EOF
        self._start = 0  # where the body starts in _buf (chunked: the next chunk-size line)
        self._chunks: list[bytes] = []
        self._keep = True  # the response allows reuse (no "connection: close")
        self._sent_at = opened  # when the awaited request was written (the read timeout counts from it)

    # ── asyncio.Protocol ────────────────────────────────────────────────────────────────────
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_read = _perf()
        if self._waiter is None:  # bytes nobody asked for: the connection cannot be trusted again
            self.close()
            return
        self._buf += data
        try:
            if self._length == -1 and not self._parse_head():
                return
            self._parse_body()
        except _Malformed:
            self._fail("RemoteProtocolError")
            self.close()

    def eof_received(self) -> bool:
        self.closed = True
        if self._waiter is not None:
            if self._length == -3:  # a body delimited by the end of the connection: complete now
                self._finish(bytes(self._buf[self._start:]))
            else:
                self._fail("RemoteProtocolError")
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None:
            self._fail("ReadError" if exc is not None else "RemoteProtocolError")

    # ── a call ──────────────────────────────────────────────────────────────────────────────
    def send(self, parts: list[bytes], long_idle: list[float] | None = None,
             long_idle_seconds: float = 3.0) -> asyncio.Future[tuple[int, bytes]]:
        """Write one request (its parts, in order); the future gives (status, body) or raises ClientError."""
        assert self._waiter is None and self.transport is not None
        now = _perf()
        self.idle_before = now - self.last_read
        self._sent_at = now
        if long_idle is not None and self.idle_before >= long_idle_seconds:
            long_idle.append(self.idle_before)
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        self._buf.clear()
        self._length, self._start, self._keep = -1, 0, True
        self.transport.writelines(parts)
        if self.transport.is_closing():  # the write failed at once (a reset socket): nothing was sent
            self._fail("WriteError")
        return waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def stalled(self, now: float, timeout: float) -> bool:
        """An awaited answer with no byte for ``timeout`` s fails as ``ReadTimeout`` (the watchdog)."""
        if self._waiter is not None and now - max(self.last_read, self._sent_at) >= timeout:
            self._fail("ReadTimeout")
            self.close()
            return True
        return False

    # ── parsing ─────────────────────────────────────────────────────────────────────────────
    def _parse_head(self) -> bool:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                raise _Malformed
            return False
        lines = bytes(buf[:end]).split(b"\r\n")
        status_line = lines[0]
        if not status_line.startswith(b"HTTP/1.") or len(status_line) < 12:
            raise _Malformed
        try:
            status = int(status_line[9:12])
        except ValueError:
            raise _Malformed from None
        length, chunked = -1, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise _Malformed from None
            elif name == b"transfer-encoding":
                chunked = value.strip().lower().endswith(b"chunked")
            elif name == b"connection":
                self._keep = b"close" not in value.lower()
        if 100 <= status < 200:  # an interim answer: the real one follows
            del buf[:end + 4]
            return self._parse_head()
        self._status, self._start = status, end + 4
        if status in (204, 304):
            self._length = 0
        elif chunked:
            self._length = -2
        elif length >= 0:
            self._length = length
        else:
            self._length, self._keep = -3, False
        return True

    def _parse_body(self) -> None:
        buf, length = self._buf, self._length
        if length >= 0:
            have = len(buf) - self._start
            if have >= length:
                if have > length:  # bytes past the answer: never reuse this connection
                    self._keep = False
                self._finish(bytes(buf[self._start:self._start + length]))
        elif length == -2:
            self._parse_chunks()

    def _parse_chunks(self) -> None:
        buf = self._buf
        while True:
            eol = buf.find(b"\r\n", self._start)
            if eol < 0:
                return
            try:
                size = int(bytes(buf[self._start:eol]).split(b";", 1)[0], 16)
            except ValueError:
                raise _Malformed from None
            if size == 0:  # the last chunk; then optional trailers up to an empty line
                if buf.find(b"\r\n\r\n", eol) < 0:
                    return
                self._finish(b"".join(self._chunks))
                return
            if len(buf) < eol + 2 + size + 2:
                return
            self._chunks.append(bytes(buf[eol + 2:eol + 2 + size]))
            self._start = eol + 2 + size + 2

    def _finish(self, body: bytes) -> None:
        waiter, self._waiter = self._waiter, None
        self._chunks = []
        if not self._keep:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, body))

    def _fail(self, kind: str) -> None:
        waiter, self._waiter = self._waiter, None
        self._chunks = []
        self.closed = True
        if waiter is not None and not waiter.done():
            waiter.set_exception(ClientError(kind, self))


class _Malformed(Exception):
    """The bytes are not an HTTP/1.x answer."""


class RawClient:
    """Connections to one server: a pool for the open loop, a held connection for each closed-loop caller.

    ``opened`` keeps every connection's opening time and ``long_idle`` the idle seconds ≥
    ``long_idle_seconds`` before a request (both read by the kill-run report)."""

    def __init__(self, host: str, port: int, *, max_connections: int, keepalive_expiry: float,
                 timeout: float = 30.0, long_idle_seconds: float = 3.0) -> None:
        self.host, self.port = host, port
        self.max_connections, self.keepalive_expiry, self.timeout = max_connections, keepalive_expiry, timeout
        self.long_idle_seconds = long_idle_seconds
        self.opened: list[float] = []
        self.long_idle: list[float] = []
        self._idle: list[Connection] = []  # the pool's free connections, most recently used last
        self._count = 0  # the pool's connections, free or busy
        self._waiters: list[asyncio.Future[None]] = []
        self._busy: set[Connection] = set()
        self._watchdog: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RawClient:
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = _perf()
            for conn in list(self._busy):
                conn.stalled(now, self.timeout)

    async def connect(self) -> Connection:
        """A new connection (its opening time recorded), or ClientError(ConnectError / ConnectTimeout)."""
        opened = _perf()
        self.opened.append(opened)
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: Connection(opened), self.host, self.port), self.timeout)
        except TimeoutError:
            raise ClientError("ConnectTimeout", opened=opened) from None
        except OSError:
            raise ClientError("ConnectError", opened=opened) from None
        return conn

    def usable(self, conn: Connection | None) -> bool:
        """Not closed by either side and not idle past the client keep-alive expiry (httpcore's rule)."""
        return conn is not None and not conn.closed and _perf() - conn.last_read <= self.keepalive_expiry

    async def held(self, conn: Connection | None) -> Connection:
        """A closed-loop caller's connection: its own if still usable, else a new one."""
        if self.usable(conn):
            return conn  # type: ignore[return-value]
        if conn is not None:
            conn.close()
        return await self.connect()

    async def call(self, conn: Connection, parts: list[bytes]) -> tuple[int, bytes]:
        """One request on ``conn``: (status, body), or ClientError named as httpx would name it."""
        self._busy.add(conn)
        try:
            return await conn.send(parts, self.long_idle, self.long_idle_seconds)
        finally:
            self._busy.discard(conn)

    # ── the open loop's pool ────────────────────────────────────────────────────────────────
    async def acquire(self) -> Connection:
        """A free usable pooled connection (most recently used first), a new one, or wait for one."""
        while True:
            while self._idle:
                conn = self._idle.pop()
                if self.usable(conn):
                    return conn
                conn.close()
                self._count -= 1
            if self._count < self.max_connections:
                self._count += 1
                try:
                    return await self.connect()
                except ClientError:
                    self._count -= 1
                    self._wake()
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, self.timeout)
            except TimeoutError:
                raise ClientError("PoolTimeout") from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def release(self, conn: Connection) -> None:
        """Back to the pool (a closed one leaves it) and wake one waiting call."""
        if conn.closed:
            self._count -= 1
        else:
            self._idle.append(conn)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``main()`` on uvloop when it is installed (the raw client's loop), else asyncio's default."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(main())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def loop_name() -> str:
    """Which event loop :func:`run` uses (reported with the figures)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return "asyncio"
    return f"uvloop {uvloop.__version__}"
