"""ASGI middleware: request log without PHI, client JWT check, request body limit, hook deadline.

Pure ASGI (no ``BaseHTTPMiddleware``) so streaming and latency stay untouched. Order, outermost
first: log and timing → CORS → auth → body limit → app; so 401 and 413 answers are logged, timed
and carry CORS headers a browser client (the CDS Hooks sandbox) can read, and CORS preflights never
need a token. The request log and the request timing metric are one layer
(:class:`LoggedAndTimedMiddleware`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cds_engine import metrics
from cds_engine.service.auth import AuthError, JwtVerifier
from cds_engine.service.heap import note_answer
from cds_engine.service.limits import HookLimits, count_refusal
from cds_engine.service.metrics_http import route_label

__all__ = [
    "MAX_AUTHORIZATION_BYTES",
    "AuthMiddleware",
    "BodyLimitMiddleware",
    "LoggedAndTimedMiddleware",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# a signed ES384/RS384 client JWT is well under 2 KiB; anything near this is not one of ours
MAX_AUTHORIZATION_BYTES = 8 * 1024
log = logging.getLogger("cds_engine.service")
auth_log = logging.getLogger("cds_engine.service.auth")


async def _json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _request_line(scope: Scope, status: int, start: float) -> None:
    """The request log line: method, path, status, latency and what the route put in
    ``scope["state"]["log"]`` (rule ids, counts) — never patient data."""
    extra = (scope.get("state") or {}).get("log") or {}
    fields = " ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in extra.items())
    log.info(
        "%s %s %d %.1fms %s",
        scope["method"],
        scope["path"],
        status,
        (time.perf_counter() - start) * 1000,
        fields,
    )


class LoggedAndTimedMiddleware:
    """The request log line (:func:`_request_line`, written first) and the ``REQUEST_SECONDS``
    observation (labelled by :func:`~cds_engine.service.metrics_http.route_label` and the status
    class, made even when writing the line fails), timed from one clock reading at the start of the
    request. One layer: it replaced a log middleware inside a metrics middleware — one coroutine
    and one ``send`` wrapper fewer per request, the same line and observation (issue 19).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        service = route_label(scope.get("path", ""))
        start = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            try:
                if log.isEnabledFor(logging.INFO):  # the fields are built only for a line that is written
                    _request_line(scope, status, start)
            finally:
                if service is not None:
                    metrics.REQUEST_SECONDS.child(service, f"{int(status) // 100}xx").observe(
                        time.perf_counter() - start)
                note_answer()  # a frozen worker settles its heap after its first answers (service.heap)


class AuthMiddleware:
    """Require a valid client JWT on the paths under ``protected`` (except CORS preflights)."""

    def __init__(
        self,
        app: ASGIApp,
        verifier: JwtVerifier,
        protected: tuple[str, ...],
        public_base_url: str | None = None,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.protected = protected
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None

    def _audience(self, scope: Scope) -> str:
        path = scope.get("root_path", "") + scope["path"]
        if self.public_base_url:
            return self.public_base_url + scope["path"]
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if not host:
            server = scope.get("server") or ("localhost", None)
            host = f"{server[0]}:{server[1]}" if server[1] else server[0]
        return f"{scope.get('scheme', 'http')}://{host}{path}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] == "OPTIONS"
            or not any(scope["path"] == p or scope["path"].startswith(p + "/") for p in self.protected)
        ):
            await self.app(scope, receive, send)
            return
        raw = dict(scope.get("headers") or []).get(b"authorization", b"")
        header = raw[: MAX_AUTHORIZATION_BYTES + 1].decode("latin-1")
        scheme, _, token = header.partition(" ")
        try:
            if len(raw) > MAX_AUTHORIZATION_BYTES:  # refused before any decoding (red-team M1)
                raise AuthError("authorization header too long")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthError("no bearer token")
            claims = await self.verifier.verify(token.strip(), self._audience(scope))
        except AuthError as exc:
            auth_log.warning("401 %s %s: %s", scope["method"], scope["path"], exc)
            await _json(
                send,
                401,
                {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "security", "diagnostics": "unauthorized"}],
                },
                [(b"www-authenticate", b"Bearer")],
            )
            return
        scope.setdefault("state", {})["client"] = {"iss": claims.get("iss"), "tenant": claims.get("tenant")}
        await self.app(scope, receive, send)


class _TooLarge(Exception):
    pass


# a hook service call: POST /cds-services/{id} (not discovery, not feedback)
_HOOK_CALL = re.compile(r"^/cds-services/[^/]+/?$")


class BodyLimitMiddleware:
    """413 for request bodies over ``max_bytes`` — by Content-Length up front, or while streaming.

    Also the **hook deadline from arrival** (re-audit #9): a hook call not answered
    ``deadline_seconds`` after its request reached the application (head read; body, validation,
    parsing, mapping and evaluation all count) gets the 503 the hook itself gives at its deadline —
    never a partial answer. The hook's own check starts at evaluation and only between drafts, so
    250 drafts × 120 dosage instructions used to answer 200 after 22 s. Here the call is cancelled
    at the deadline unless its answer has begun; work already on a worker thread runs on to the
    hook's own deadline and is discarded. Default: :class:`HookLimits`' 10 s.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, deadline_seconds: float | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.deadline_seconds = (
            HookLimits().deadline_seconds if deadline_seconds is None else deadline_seconds
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST" and _HOOK_CALL.match(scope.get("path", "")):
            await self._within_deadline(scope, receive, send)
            return
        await self._limited(scope, receive, send)

    async def _within_deadline(self, scope: Scope, receive: Receive, send: Send) -> None:
        """:meth:`_limited`, answered with a 503 if nothing was sent by the deadline."""
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                timer.reschedule(None)  # an answer under way is never cut
            await send(message)

        try:
            async with asyncio.timeout(self.deadline_seconds) as timer:
                await self._limited(scope, receive, watched)
        except TimeoutError:
            if started:
                raise
            count_refusal("hook-deadline")
            await _json(send, 503, _LATE)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _json(send, 413, _too_large(self.max_bytes))
            return
        received = 0
        started = tripped = False

        async def limited() -> Message:
            nonlocal received, tripped
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    tripped = True
                    raise _TooLarge
            return message

        async def tracking(message: Message) -> None:
            # FastAPI turns any error while reading the body into its own 400: once the limit has
            # tripped, whatever the app answers is replaced by the 413 (bodies sent chunked).
            nonlocal started
            if tripped:
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _json(send, 413, _too_large(self.max_bytes))
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, tracking)
        except _TooLarge:
            if not started:
                await _json(send, 413, _too_large(self.max_bytes))


# the same answer as the hook's own deadline (service.hook, HookError 503)
_LATE = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "processing",
               "diagnostics": "the checks did not finish in time: no advice computed, review manually"}],
}


def _too_large(limit: int) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "too-costly", "diagnostics": f"request body exceeds {limit} bytes"}
        ],
    }
