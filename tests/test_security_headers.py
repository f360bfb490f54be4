"""Security issue 15, items 2 and 7 (red-team M1, L6, L8): header bounds and the token audience.

* ``Authorization`` over 8 KiB → 401 before any decoding (the verifier is never called);
* all headers over 64 KiB → 431 from the HTTP parser wrapper, while the bytes arrive;
* a request head not complete within the header-read timeout → 408 and the connection closed;
* ``serve`` runs httptools with those bounds and 5 s keep-alive (``--keep-alive``), trusts
  X-Forwarded-For only from ``--forwarded-allow-ips``, and with authentication on refuses to start
  without ``--public-url``;
* ``aud`` must equal the called URL exactly (no trailing-slash variant);
* a JWK Set URL that failed is not fetched again for 60 s (unsigned tokens cannot hammer it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from tests.service_helpers import REPO, InertEngineHolder, Signer, uvicorn_in_thread
from typer.testing import CliRunner

from cds_engine.cli import app as cli
from cds_engine.service import AuthSettings, create_app
from cds_engine.service.auth import AuthError, JwtVerifier, TrustedIssuer
from cds_engine.service.http_limits import (
    CLIENT_KEEP_ALIVE_SECONDS,
    KEEP_ALIVE_SECONDS,
    MAX_HEADER_BYTES,
    bounded_protocol,
)
from cds_engine.service.middleware import MAX_AUTHORIZATION_BYTES, AuthMiddleware

BASE = "https://cds.example.org"


# ── Authorization: bounded before decoding ─────────────────────────────────────────────────
class CountingVerifier:
    def __init__(self) -> None:
        self.calls = 0

    async def verify(self, token: str, audience: str) -> dict[str, Any]:
        self.calls += 1
        raise AuthError("test")


def test_oversized_authorization_is_401_before_any_decoding():
    verifier = CountingVerifier()

    async def ok(scope: Any, receive: Any, send: Any) -> None:  # never reached
        raise AssertionError("the app must not run")

    middleware = AuthMiddleware(ok, verifier, ("/cds-services",), BASE)  # type: ignore[arg-type]
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    token = "x" * (MAX_AUTHORIZATION_BYTES + 1)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/cds-services",
        "headers": [(b"authorization", b"Bearer " + token.encode())],
    }
    asyncio.run(middleware(scope, receive, send))
    assert sent[0]["status"] == 401
    assert verifier.calls == 0
    # a normal-sized token does reach the verifier
    scope["headers"] = [(b"authorization", b"Bearer abc")]
    asyncio.run(middleware(scope, receive, send))
    assert verifier.calls == 1


# ── all headers and the header-read time: at the parser ────────────────────────────────────
@pytest.fixture
def bounded_server() -> Iterator[int]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    with uvicorn_in_thread(app, http=bounded_protocol(header_timeout=0.5), timeout_keep_alive=5) as port:
        yield port


def _exchange(port: int, payload: bytes, wait: float = 0.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        with contextlib.suppress(OSError):  # the server may close while a huge head is being sent
            conn.sendall(payload)
        time.sleep(wait)
        chunks = []
        try:
            while chunk := conn.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):
                    break
        except OSError:
            pass
    return b"".join(chunks)


def test_headers_over_64_kib_are_431(bounded_server):
    small = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 60_000 + b"\r\n\r\n"
    assert _exchange(bounded_server, small).startswith(b"HTTP/1.1 200")
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n"
    assert _exchange(bounded_server, big).startswith(b"HTTP/1.1 431")
    many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-A: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n" * 3000
    assert _exchange(bounded_server, many).startswith(b"HTTP/1.1 431")  # never completed, still refused


def test_a_slow_request_head_is_cut_off(bounded_server):
    slow = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n"  # never finished
    answer = _exchange(bounded_server, slow, wait=1.5)
    assert answer.startswith(b"HTTP/1.1 408")
    # a connection that sends nothing at all is closed as well
    with socket.create_connection(("127.0.0.1", bounded_server), timeout=5) as idle:
        time.sleep(1.0)
        assert idle.recv(65536).startswith(b"HTTP/1.1 408")


@pytest.fixture
def serve_options(monkeypatch) -> Iterator[dict[str, Any]]:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
    monkeypatch.setattr("cds_engine.commands.serve.EngineHolder", InertEngineHolder)
    umask = os.umask(0o022)  # serve narrows the process umask: give the test session's back
    os.umask(umask)
    yield seen
    os.umask(umask)


def test_serve_runs_the_bounded_parser_with_short_keep_alive(serve_options):
    seen = serve_options
    args = ["serve", "--no-auth", "--db", "none", "--rules", str(REPO / "rules")]
    result = CliRunner().invoke(cli, [*args, "--forwarded-allow-ips", "10.0.0.5"])
    assert result.exit_code == 0, result.output
    assert seen["timeout_keep_alive"] == 5 == KEEP_ALIVE_SECONDS
    assert seen["forwarded_allow_ips"] == "10.0.0.5"
    assert seen["http"].__name__ == "BoundedHttpToolsProtocol"


def test_serve_keep_alive_can_be_set_above_a_load_balancers_idle_timeout(serve_options):
    """A client or proxy must close an idle connection before the server does (a request sent just
    as the server closes is reset): behind a balancer that keeps idle connections 60 s, the
    service's keep-alive goes above it. Bounded: 1 to 300 s."""
    args = ["serve", "--no-auth", "--db", "none", "--rules", str(REPO / "rules")]
    result = CliRunner().invoke(cli, [*args, "--keep-alive", "65"])
    assert result.exit_code == 0, result.output
    assert serve_options["timeout_keep_alive"] == 65
    for bad in ("0", "301", "forever"):
        result = CliRunner().invoke(cli, [*args, "--keep-alive", bad])
        assert result.exit_code == 2, (bad, result.output)


def test_our_clients_expire_idle_connections_before_the_server_closes_them():
    assert 0 < CLIENT_KEEP_ALIVE_SECONDS < KEEP_ALIVE_SECONDS


# ── audience ───────────────────────────────────────────────────────────────────────────────
def test_auth_on_without_public_url_refuses_to_start(serve_options, tmp_path: Path):
    issuers = Signer().issuers_file(tmp_path)
    args = ["serve", "--db", "none", "--rules", str(REPO / "rules"), "--trusted-issuers", str(issuers),
            "--data-dir", str(tmp_path)]  # the jti replay file goes there, not into the working directory
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 2 and "--public-url" in refused.output
    started = CliRunner().invoke(cli, [*args, "--public-url", BASE])
    assert started.exit_code == 0, started.output


def test_aud_must_equal_the_called_url_exactly(engine):
    signer = Signer()
    auth = AuthSettings(issuers={signer.issuer: TrustedIssuer(jwks=signer.jwks())}, public_base_url=BASE)
    app = create_app(lambda: engine, auth=auth)
    with TestClient(app) as client:

        def discovery(aud: str) -> int:
            headers = {"Authorization": f"Bearer {signer.token(aud)}"}
            return client.get("/cds-services", headers=headers).status_code

        assert discovery(f"{BASE}/cds-services") == 200
        assert discovery(f"{BASE}/cds-services/") == 401  # no trailing-slash variant
        assert discovery(f"{BASE}/") == 401


def test_a_failed_jwks_url_backs_off_60_seconds():
    fetches = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal fetches
        fetches += 1
        return httpx.Response(404)

    now = [1000.0]
    issuer = "https://flaky.example"
    settings = AuthSettings(issuers={issuer: TrustedIssuer(jwks_url="https://flaky.example/jwks.json")})
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    verifier = JwtVerifier(settings, client=client, clock=lambda: now[0])
    signer = Signer(issuer=issuer)

    async def attempts(n: int) -> None:
        for _ in range(n):
            with pytest.raises(AuthError):
                await verifier.verify(signer.token(BASE + "/cds-services"), BASE + "/cds-services")

    asyncio.run(attempts(30))
    assert fetches == 1  # 30 tokens naming the issuer, one outbound fetch
    now[0] += 61
    asyncio.run(attempts(5))
    assert fetches == 2
