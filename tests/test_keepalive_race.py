"""The keep-alive timer must not close a connection whose next request has already arrived.

uvicorn runs on uvloop when it is installed (it is, in ``requirements.lock``), and libuv runs the
timers that are due *before* it polls for I/O. After the event loop stalled for longer than
``timeout_keep_alive`` (a slow answer, a GC pause, a busy machine), the keep-alive timer of an
idle connection fires first and closes it although the client's next request is already in the
kernel buffer: the close with unread data sends a reset, and the client — which sent a POST on a
connection it had every right to reuse — sees a read error and may not retry. :func:`bounded_protocol`
checks for waiting bytes before it lets the timer close the connection.

The stall must fall in libuv's I/O phase (a read callback, as a long GC pause or a slow parse would;
or a ``SIGSTOP``/``SIGCONT`` of the worker, after which libuv's interrupted poll returns without
polling): a stall in an asyncio task runs in libuv's idle phase, which is followed by a poll, and
then the waiting request is read before the timer fires. asyncio's own loop always polls before it
runs due timers, so it is the control here.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cds_engine.service.http_limits import bounded_protocol
from service_helpers import uvicorn_in_thread

KEEP_ALIVE = 1  # seconds: uvicorn's timeout_keep_alive in this test
BLOCK = 2.0  # seconds the /block route stalls the event loop (longer than KEEP_ALIVE)


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: test\r\ncontent-length: 0\r\n\r\n".encode()


@pytest.fixture(params=["uvloop", "asyncio"])
def stalling_server(request: pytest.FixtureRequest) -> Iterator[int]:
    """A bounded server that stalls its event loop for :data:`BLOCK` seconds in the read callback of a
    ``/block`` request (libuv's I/O phase)."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = scope["path"].encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    base = bounded_protocol()

    class Stalling(base):  # type: ignore[misc, valid-type]
        def data_received(self, data: bytes) -> None:
            if data.startswith(b"GET /block "):
                time.sleep(BLOCK)  # blocks the whole loop inside an I/O callback
            super().data_received(data)

    with uvicorn_in_thread(app, http=Stalling, loop=request.param, timeout_keep_alive=KEEP_ALIVE) as port:
        yield port


def _read_response(conn: socket.socket) -> bytes:
    """One whole response (head and ``content-length`` body); ``b""`` if the server closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_request_sent_during_a_stall_is_answered_not_reset(stalling_server: int) -> None:
    port = stalling_server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as kept:
        kept.sendall(_request("/first"))
        assert _read_response(kept).startswith(b"HTTP/1.1 200"), "first answer"
        # The keep-alive timer of `kept` is now armed (KEEP_ALIVE s). Stall the loop past it …
        with socket.create_connection(("127.0.0.1", port), timeout=10) as staller:
            staller.sendall(_request("/block"))
            time.sleep(0.3)  # the loop is inside time.sleep(BLOCK)
            # … and send the next request on the kept-alive connection while it is stalled.
            kept.sendall(_request("/second"))
            try:
                answer = _read_response(kept)
            except ConnectionResetError:
                answer = b"<reset>"
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"/second"), answer
            assert _read_response(staller).endswith(b"/block")


def test_an_idle_kept_alive_connection_is_still_closed(stalling_server: int) -> None:
    with socket.create_connection(("127.0.0.1", stalling_server), timeout=10) as kept:
        kept.sendall(_request("/first"))
        assert _read_response(kept).endswith(b"/first")
        started = time.monotonic()
        assert kept.recv(65536) == b""  # closed by the keep-alive timer …
        assert KEEP_ALIVE - 0.2 < time.monotonic() - started < KEEP_ALIVE + 3  # … when it is due
