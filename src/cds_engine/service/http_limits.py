"""Header limits at the HTTP parser (security issue 15, item 2; red-team M1).

The HTTP parser that ships is **httptools** (uvicorn's ``auto`` choice when it is installed, and
it is in ``requirements.lock``). Neither it nor uvicorn bounds the size of the request head or the
time a client may take to send it, so :func:`bounded_protocol` wraps uvicorn's
``HttpToolsProtocol``:

* all request headers (request line included) over ``max_header_bytes`` (64 KiB) → **431**,
  connection closed — counted while the bytes arrive, so a 100 MB header is never buffered;
* a request head not complete ``header_timeout`` (10 s) after the connection opened or after its
  first byte arrived → **408**, connection closed (slowloris);
* idle keep-alive is uvicorn's ``timeout_keep_alive`` (``serve`` sets 5 s).

The ``Authorization`` header has a tighter bound of its own in :class:`AuthMiddleware` (8 KiB →
401 before any decoding). A reverse proxy in front should bound the same things (SECURITY.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cds_engine.service.limits import count_refusal

__all__ = ["HEADER_TIMEOUT_SECONDS", "KEEP_ALIVE_SECONDS", "MAX_HEADER_BYTES", "bounded_protocol"]

log = logging.getLogger("cds_engine.service.http")

MAX_HEADER_BYTES = 64 * 1024
HEADER_TIMEOUT_SECONDS = 10.0
KEEP_ALIVE_SECONDS = 5


def _plain(status: int, reason: str) -> bytes:
    body = reason.encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def bounded_protocol(
    max_header_bytes: int = MAX_HEADER_BYTES, header_timeout: float = HEADER_TIMEOUT_SECONDS
) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a size and a time bound on each request head."""

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True  # reading a request line and headers (or waiting for one)
            self._head_bytes = 0
            self._head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

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
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head = True  # the next request's head (its timer starts with its first byte)

    return BoundedHttpToolsProtocol
