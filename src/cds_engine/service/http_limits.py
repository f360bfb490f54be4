"""Header limits at the HTTP parser (security issue 15, item 2; red-team M1).

The HTTP parser that ships is **httptools** (uvicorn's ``auto`` choice when it is installed, and
it is in ``requirements.lock``). Neither it nor uvicorn bounds the size of the request head or the
time a client may take to send it, so :func:`bounded_protocol` wraps uvicorn's
``HttpToolsProtocol``:

* all request headers (request line included) over ``max_header_bytes`` (64 KiB) → **431**,
  connection closed — counted while the bytes arrive, so a 100 MB header is never buffered;
* a request head not complete ``header_timeout`` (10 s) after the connection opened or after its
  first byte arrived → **408**, connection closed (slowloris);
* a request body not complete ``body_timeout`` (10 s) after its head → **408** (when no answer has
  started; else the connection is just closed), counted — a body drip-fed at 1 byte/s no longer
  holds a connection and a request task open (re-audit #8). 10 s: the hook's answer is due 10 s
  after arrival anyway, and a 10 MB body at 10 Mbit/s takes 8 s;
* idle keep-alive is uvicorn's ``timeout_keep_alive`` (``serve --keep-alive``, default 5 s) — but
  the timer does not close a connection whose next request is already waiting in the socket (issue
  19): on uvloop, after a stall of the loop longer than the keep-alive, libuv runs the due timer
  before it polls, and closing a socket with unread bytes sends a reset to a client that did nothing
  wrong. The timer is armed again instead, and the read that follows disarms it.
* a request a client sends on an idle connection *just as* the timer closes it is still reset —
  no server can tell it is coming. HTTP's rule is that the client (or proxy) closes idle
  connections first: its idle expiry must be shorter than the server's keep-alive. httpx's
  default expiry is 5 s, equal to ours, and ``bench/load.py`` measured requests on connections idle
  up to 4.1 s in its closed loop (the pool reuses the first free connection, so the last ones idle
  for seconds) — the lone ``ReadError`` of some runs. Our benchmarks' clients expire idle
  connections after :data:`CLIENT_KEEP_ALIVE_SECONDS`; the README says what to set in front.

Each response with a ``content-length`` also leaves in **one** write rather than uvicorn's two (head,
then body): one send system call and one TCP segment fewer per answer (issue 19, item 3), the bytes
on the wire unchanged (:class:`_OneWriteResponse`).

The ``Authorization`` header has a tighter bound of its own in :class:`AuthMiddleware` (8 KiB →
401 before any decoding). A reverse proxy in front should bound the same things (SECURITY.md).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

try:  # POSIX (the service runs there); elsewhere the keep-alive timer closes as uvicorn's does
    import fcntl
    import termios
except ImportError:  # pragma: no cover
    fcntl = termios = None  # type: ignore[assignment]

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cds_engine.service.limits import count_refusal

__all__ = [
    "BODY_TIMEOUT_SECONDS",
    "CLIENT_KEEP_ALIVE_SECONDS",
    "HEADER_TIMEOUT_SECONDS",
    "KEEP_ALIVE_SECONDS",
    "MAX_HEADER_BYTES",
    "bounded_protocol",
]

log = logging.getLogger("cds_engine.service.http")

MAX_HEADER_BYTES = 64 * 1024
HEADER_TIMEOUT_SECONDS = 10.0
BODY_TIMEOUT_SECONDS = 10.0  # from the end of the head to the last byte of the body
KEEP_ALIVE_SECONDS = 5  # serve's default (--keep-alive); a client must expire idle connections sooner
CLIENT_KEEP_ALIVE_SECONDS = 4  # what our own clients (benchmarks) use: below the server's, see above


def _plain(status: int, reason: str) -> bytes:
    body = reason.encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def _unread_bytes(transport: asyncio.BaseTransport) -> int:
    """Bytes waiting in the kernel's receive buffer of the transport's socket (``FIONREAD``).

    ``0`` when there is no socket or the query fails: the caller then closes the idle connection,
    which is what uvicorn does anyway."""
    sock = transport.get_extra_info("socket")
    if sock is None or fcntl is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    return int(struct.unpack("i", raw)[0])


class _OneWriteResponse:
    """The transport as one uvicorn request cycle sees it: the response head is held back and
    written together with the body that follows it, in one ``write``.

    uvicorn writes the head in the ``http.response.start`` step and the body in the
    ``http.response.body`` step. The first write after the cycle started its response is the head
    (a ``100 Continue`` is written before, while the response has not started); it is held only
    with a ``content-length`` (not chunked) and for a method other than HEAD — then uvicorn's
    next write is the body (``b""`` included), or, on an application error, the cycle closes the
    transport, which writes the held head first. The client receives the same bytes in the same
    order as before; streamed (chunked) responses are written as they come.

    Kept to a few attribute tests per write (about 1 µs per response, against some 4 µs of CPU
    for the send system call it saves on loopback TCP).
    """

    __slots__ = ("_armed", "_cycle", "_held", "_transport", "_write")

    def __init__(self, transport: asyncio.Transport, cycle: Any, armed: bool) -> None:
        self._transport = transport
        self._write = transport.write
        self._cycle = cycle
        self._held: bytes | None = None
        self._armed = armed  # the response's head is still to come (and the method is not HEAD)

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._write(held + data)
        elif self._armed and self._cycle.response_started:
            self._armed = False
            if self._cycle.chunked_encoding is False:
                self._held = data  # the head: the body is the next write
            else:
                self._write(data)
        else:
            self._write(data)

    def close(self) -> None:
        held = self._held
        if held is not None:  # the application failed after its head: the head goes out first
            self._held = None
            self._write(held)
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:  # anything else a cycle might use: the real transport
        return getattr(self._transport, name)


def bounded_protocol(
    max_header_bytes: int = MAX_HEADER_BYTES,
    header_timeout: float = HEADER_TIMEOUT_SECONDS,
    body_timeout: float = BODY_TIMEOUT_SECONDS,
) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a size and a time bound on each request head, and a time
    bound on each request body."""

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True  # reading a request line and headers (or waiting for one)
            self._head_bytes = 0
            self._head_timer: asyncio.TimerHandle | None = None
            self._body_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._disarm_body()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _disarm_body(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def _body_timed_out(self) -> None:
            """The body did not arrive in time: 408 unless an answer has begun, then close. The
            application's ``receive`` then gets ``http.disconnect`` (uvicorn's connection_lost)."""
            self._body_timer = None
            if self._in_head or self.transport.is_closing():
                return
            count_refusal("body-read-timeout")
            cycle = self.cycle
            if cycle is None or not cycle.response_started:
                # the closed connection marks the cycle disconnected: the application's own
                # answer, if it ever comes, is dropped by uvicorn
                self.transport.write(_plain(408, "Request Timeout"))
            self.transport.close()

        def _refuse(self, status: int, reason: str, kind: str) -> None:
            count_refusal(kind)
            self._disarm()
            if not self.transport.is_closing():
                self.transport.write(_plain(status, reason))
                self.transport.close()

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._in_head:
                self._refuse(408, "Request Timeout", "header-read-timeout")

        def timeout_keep_alive_handler(self) -> None:
            """Close the idle connection — unless its next request has already arrived."""
            self.timeout_keep_alive_task = None
            waiting = not self.transport.is_closing() and not self.flow.read_paused
            if waiting and _unread_bytes(self.transport) > 0:
                # The loop stalled and the timer ran before the read: let data_received (which
                # disarms this timer) take the request; the timer guards in case it never comes.
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )
                return
            super().timeout_keep_alive_handler()

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                if self._head_timer is None:
                    self._arm()  # the first byte of a request on a kept-alive connection
                before = self._head_bytes
                self._head_bytes += len(data)
                if self._head_bytes > max_header_bytes:
                    end = data.find(b"\r\n\r\n")
                    if end == -1 or before + end + 4 > max_header_bytes:
                        self._refuse(431, "Request Header Fields Too Large", "headers-too-large")
                        return
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_bytes = 0
            self._disarm()
            self._disarm_body()
            self._body_timer = self.loop.call_later(body_timeout, self._body_timed_out)
            before = self.cycle
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and cycle is not before and cycle.transport is self.transport:
                armed = self.scope["method"] != "HEAD"
                cycle.transport = _OneWriteResponse(self.transport, cycle, armed)  # type: ignore[assignment]

        def on_message_complete(self) -> None:
            self._disarm_body()
            super().on_message_complete()
            self._in_head = True  # the next request's head (its timer starts with its first byte)

    return BoundedHttpToolsProtocol
