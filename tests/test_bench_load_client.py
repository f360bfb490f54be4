"""bench/load.py's lean client (``--client raw``, bench/raw_client.py) counts what httpx counts.

* :class:`load.Body` joins pre-encoded parts: the same bytes as the old per-call
  ``payload.replace(...).replace(...)`` (then encoded), on the bench's real body and on a text with
  several placeholders.
* The raw client's request carries httpx's head (header names, order and values; only the
  User-Agent differs) and the same body bytes.
* Against one scripted server, each way an answer can go wrong ends as the same key for both clients
  (the name of httpx's exception): a FIN or a reset before the status line, a short body, a
  non-HTTP answer, a refused connect, no answer within the timeout; a keep-alive connection the
  server closed while idle, or idle past the client's expiry, is replaced without an error.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import load
import raw_client

_OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n{\"cards\":[]}"


def test_body_parts_are_the_old_replaced_text() -> None:
    body, _ = load.realistic_body()
    body["hookInstance"] = load.HOOK_INSTANCE
    body["context"]["draftOrders"]["entry"][0]["resource"]["id"] = load.DRAFT_ID
    payloads = [json.dumps(body), f"x{load.DRAFT_ID}{load.HOOK_INSTANCE}{load.HOOK_INSTANCE}y{load.DRAFT_ID}",
                "no placeholder", load.HOOK_INSTANCE]
    for payload in payloads:
        split = load.Body(payload)
        for draft in load.draft_ids(12):
            hook = str(uuid.uuid4())
            old = payload.replace(load.HOOK_INSTANCE, hook).replace(load.DRAFT_ID, draft).encode()
            assert b"".join(split.parts(hook.encode(), draft.encode())) == old


class _Scripted:
    """A blocking TCP server in a thread; each request's path says how to answer it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                while len(buf) < length:
                    buf += conn.recv(65536)
                self.heads.append(head)
                self.bodies.append(buf[:length])
                buf = buf[length:]
                what = head.split(b" ")[1].decode().strip("/")
                if what == "ok":
                    conn.sendall(_OK)
                elif what == "chunked":
                    conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                 b"5\r\n{\"car\r\n7\r\nds\":[]}\r\n0\r\n\r\n")
                elif what == "fin":
                    return
                elif what == "rst":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                elif what == "short":
                    conn.sendall(_OK[:-4])
                    return
                elif what == "garbage":
                    conn.sendall(b"SPAM\r\n\r\n")
                    return
                elif what == "close":
                    conn.sendall(_OK.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n"))
                    return
                elif what == "idle-fin":  # answers, then closes the idle connection (keep-alive expiry)
                    conn.sendall(_OK)
                    time.sleep(0.1)
                    return
                elif what == "slow":
                    time.sleep(2.5)
                    conn.sendall(_OK)


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _httpx_calls(port: int, paths: list[str], pause: float, timeout: float) -> list[str]:
    out = []
    limits = httpx.Limits(max_connections=1, keepalive_expiry=0.3)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        for path in paths:
            try:
                response = await client.post(f"http://127.0.0.1:{port}/{path}", content=b"{}",
                                             headers={"content-type": "application/json",
                                                      "authorization": "Bearer t"})
                out.append(f"{response.status_code} {response.content.decode()}")
            except httpx.HTTPError as exc:
                out.append(type(exc).__name__)
            await asyncio.sleep(pause)
    return out


async def _raw_calls(port: int, paths: list[str], pause: float, timeout: float) -> list[str]:
    out = []
    async with raw_client.RawClient("127.0.0.1", port, max_connections=1, keepalive_expiry=0.3,
                                    timeout=timeout) as client:
        conn = None
        for path in paths:
            try:
                conn = await client.held(conn)
                head = load._request_head(f"http://127.0.0.1:{port}", f"/{path}")
                status, body = await client.call(conn, [head, b"t", b"\r\nContent-Length: 2\r\n\r\n", b"{}"])
                out.append(f"{status} {body.decode()}")
            except raw_client.ClientError as exc:
                out.append(exc.kind)
            await asyncio.sleep(pause)
    return out


@pytest.mark.parametrize("paths", [
    ["ok", "chunked", "ok"],
    ["ok", "fin", "ok"],
    ["ok", "rst", "ok"],
    ["short", "ok", "garbage", "ok"],
    ["close", "ok", "idle-fin", "ok"],
], ids=["chunked", "fin", "reset", "short-and-garbage", "close-and-idle-fin"])
def test_raw_counts_what_httpx_counts(paths: list[str]) -> None:
    server = _Scripted()
    try:
        via_httpx = asyncio.run(_httpx_calls(server.port, paths, 0.2, 5))
        httpx_connections = server.accepted
        via_raw = raw_client.run(lambda: _raw_calls(server.port, paths, 0.2, 5))
    finally:
        server.sock.close()
    assert via_raw == via_httpx
    assert server.accepted - httpx_connections == httpx_connections  # the same reconnects


def test_raw_idle_expiry_and_timeouts_as_httpx() -> None:
    server = _Scripted()
    try:
        # idle past the client's expiry (0.3 s): a new connection, no error; then a read timeout
        paths = ["ok", "ok", "slow"]
        via_httpx = asyncio.run(_httpx_calls(server.port, paths, 0.5, 1.0))
        httpx_connections = server.accepted
        via_raw = raw_client.run(lambda: _raw_calls(server.port, paths, 0.5, 1.0))
    finally:
        server.sock.close()
    assert via_raw == via_httpx == ["200 {\"cards\":[]}", "200 {\"cards\":[]}", "ReadTimeout"]
    assert server.accepted == 2 * httpx_connections == 6
    port = _refused_port()
    assert raw_client.run(lambda: _raw_calls(port, ["ok"], 0, 1)) == asyncio.run(
        _httpx_calls(port, ["ok"], 0, 1)) == ["ConnectError"]


def test_raw_request_is_httpx_request() -> None:
    """Same head (but the User-Agent) and body as httpx sends for the bench's call."""
    server = _Scripted()
    body = load.Body(f'{{"hookInstance": "{load.HOOK_INSTANCE}", "id": "{load.DRAFT_ID}"}}')
    parts = body.parts(b"h-1", b"mr-1")
    base = f"http://127.0.0.1:{server.port}"

    async def via_httpx() -> None:
        async with httpx.AsyncClient() as client:
            await client.post(base + "/ok", content=b"".join(parts),
                              headers={"content-type": "application/json", "authorization": "Bearer tok"})

    async def via_raw() -> None:
        async with raw_client.RawClient("127.0.0.1", server.port, max_connections=1,
                                        keepalive_expiry=4) as client:
            conn = await client.acquire()
            length = b"\r\nContent-Length: %d\r\n\r\n" % sum(map(len, parts))
            status, _ = await client.call(conn, [load._request_head(base, "/ok"), b"tok", length, *parts])
            assert status == 200
            client.release(conn)

    try:
        asyncio.run(via_httpx())
        raw_client.run(via_raw)
    finally:
        server.sock.close()
    old, new = (h.split(b"\r\n") for h in server.heads)
    assert [line for line in old if not line.startswith(b"User-Agent")] == [
        line for line in new if not line.startswith(b"User-Agent")]
    assert server.bodies[0] == server.bodies[1] == b"".join(parts)


def test_both_clients_drive_the_null_endpoint() -> None:
    """bench/load.py's drive, closed and open loop, on both clients: every call a 200, none lost."""
    with load.null_endpoint(_refused_port()) as base:
        payload = f'{{"hookInstance": "{load.HOOK_INSTANCE}", "draft": "{load.DRAFT_ID}"}}'
        for client in ("raw", "httpx"):
            for mode in ("closed", "open"):
                run = load.Run(store="null", seconds=0.5, concurrency=4, client=client, mode=mode, rate=40)
                load.run_drive(base, payload, load.Tokens(load.Signer(), base + load.SIGN), run)
                assert run.errors == {} and len(run.ok) == len(run.latencies) > 0, (client, mode, run.errors)
                assert len(set(run.ok)) == len(run.ok)
