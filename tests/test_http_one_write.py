"""A response leaves the bounded protocol in one write, byte for byte what uvicorn wrote in two.

uvicorn writes the response head and the body in two ``transport.write`` calls: two send system
calls and two TCP segments per answer (issue 19, item 3). :func:`bounded_protocol` holds the head
back until the body follows. These tests drive the real protocol class with a transport double
that records each write, and compare the bytes with what the client must receive.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from cds_engine.service.http_limits import bounded_protocol

DATE = [(b"date", b"Thu, 01 Jan 2026 00:00:00 GMT"), (b"server", b"uvicorn")]


class RecordingTransport(asyncio.Transport):
    """A transport double: records each ``write``; closing it calls ``connection_lost``."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.protocol: Any = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def exchange(app: Any, request: bytes, then: bytes = b"") -> RecordingTransport:
    """Feed ``request`` (and, a moment later, ``then``) to the protocol; the transport after the answer."""
    return asyncio.run(_exchange(app, request, then))


async def _exchange(app: Any, request: bytes, then: bytes) -> RecordingTransport:
    config = uvicorn.Config(app, http=bounded_protocol(), lifespan="off", log_level="critical")
    config.load()
    state = ServerState()
    state.default_headers = DATE
    protocol = config.http_protocol_class(config=config, server_state=state, app_state={})
    transport = RecordingTransport()
    transport.protocol = protocol
    protocol.connection_made(transport)
    protocol.data_received(request)
    await asyncio.sleep(0.05)
    if then:
        protocol.data_received(then)
    for task in list(protocol.tasks):
        await task
    await asyncio.sleep(0)
    transport.close()
    await asyncio.sleep(0)
    return transport


def _sized(body: bytes, status: int = 200) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


GET = b"GET /x HTTP/1.1\r\nhost: t\r\n\r\n"
START = b"HTTP/1.1 200 OK\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\nserver: uvicorn\r\n"
HEAD_OK = (
    b"HTTP/1.1 200 OK\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\nserver: uvicorn\r\n"
    b"content-type: text/plain\r\ncontent-length: 5\r\n\r\n"
)


def test_a_sized_response_is_one_write_of_the_same_bytes() -> None:
    transport = exchange(_sized(b"hello"), GET)
    assert transport.writes == [HEAD_OK + b"hello"]


def test_an_empty_body_is_one_write_too() -> None:
    transport = exchange(_sized(b""), GET)
    assert transport.writes == [HEAD_OK.replace(b"content-length: 5", b"content-length: 0")]


def test_a_head_request_writes_its_head_at_once() -> None:
    transport = exchange(_sized(b"hello"), b"HEAD /x HTTP/1.1\r\nhost: t\r\n\r\n")
    assert transport.writes == [HEAD_OK]


def test_a_streamed_response_is_not_held() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})

    transport = exchange(app, GET)
    head = b"HTTP/1.1 200 OK\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\nserver: uvicorn\r\n"
    assert transport.writes == [
        head + b"transfer-encoding: chunked\r\n\r\n",
        b"1\r\na\r\n",
        b"1\r\nb\r\n0\r\n\r\n",
    ]


def test_a_body_sent_in_parts_with_a_length_is_written_as_before_after_the_head() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"8")]})
        await send({"type": "http.response.body", "body": b"ab\r\n\r\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"cd"})

    transport = exchange(app, GET)
    head = START + b"content-length: 8\r\n\r\n"
    assert transport.writes == [head + b"ab\r\n\r\n", b"cd"]


def test_an_app_failing_after_the_head_still_sends_the_head_then_closes() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        raise RuntimeError("boom")

    transport = exchange(app, GET)
    head = START + b"content-length: 5\r\n\r\n"
    assert transport.writes == [head]
    assert transport.closed


def test_100_continue_is_not_held() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        await _sized(message["body"])(scope, receive, send)

    request = b"POST /x HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"
    transport = exchange(app, request, then=b"hello")
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n", HEAD_OK + b"hello"]
