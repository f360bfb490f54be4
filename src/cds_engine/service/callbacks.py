"""FHIR call-backs under control: which server, which ids, how many calls, how many bytes.

A hook request names its own ``fhirServer`` and hands us a bearer token; an attacker who can
sign a request could point us anywhere (server-side request forgery). So, before any call-back:

* **Allow-list.** ``fhirServer`` must be https and start with a base listed for the calling
  issuer (``fhir_servers`` in the trusted-issuers file). A plain-http loopback base
  (``http://127.0.0.1:<port>``, ``localhost``, ``[::1]``) only with ``--allow-loopback-fhir``, a
  trial flag logged loudly. Without authentication (``--no-auth``, local trials) any https base
  is accepted. Not allowed → no call-back and no use of the token; the prefetch is still
  evaluated (412 only if essential data are then missing).
* **Whose data.** ``fhirAuthorization.patient``, when sent, must equal ``context.patientId``;
  otherwise the token is not used (no call-backs). The ids put into call-back URLs must match
  the FHIR id grammar (``[A-Za-z0-9-.]{1,64}``) and are URL-encoded.
* **Same origin.** A paging ``next`` link is followed only when it has ``fhirServer``'s scheme,
  host and port and no user info; the bearer token is sent to that origin only.
* **Bounded.** At most ``max_calls`` call-backs per hook (default 20); a body at most
  ``max_bytes_per_call`` (20 MiB) and all bodies of one hook at most ``max_bytes_per_hook``
  (50 MiB), counted while streaming; JSON is parsed inside the hook's time budget (in a thread,
  so the budget's timeout still holds); at most ``max_pages`` pages per key (5).
* **Long searches.** A search URL longer than ``max_url_chars`` (1,800) is sent as
  ``POST {type}/_search`` with the parameters form-encoded (FHIR R4 §3.1.0.1.4.1), since proxies
  and servers refuse long GETs (414).

Refusals are counted (``request_limited_total`` in ``/healthz``) and logged by kind only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import anyio
import httpx

from cds_engine.service.bounds import scrub_resources
from cds_engine.service.limits import count_refusal
from cds_engine.service.models import HookRequest

__all__ = [
    "CallbackLimits",
    "CallbackPolicy",
    "CallbackRefused",
    "HookCalls",
    "PartialRead",
    "begin_hook",
    "current_calls",
    "encode_id",
    "end_hook",
    "fhir_id_ok",
    "read_json",
    "same_origin",
    "search_request",
]

log = logging.getLogger("cds_engine.service.callbacks")

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_LOOPBACK_NAMES = frozenset({"localhost"})


class CallbackRefused(Exception):
    """A call-back that must not be made (limit reached, other origin, body too large)."""


class PartialRead(Exception):
    """Some pages of a search were read, not all: the resources read so far, and why."""

    def __init__(self, resources: list[dict[str, Any]], why: str) -> None:
        super().__init__(why)
        self.resources = resources
        self.why = why


@dataclass(frozen=True)
class CallbackLimits:
    max_calls: int = 20
    max_bytes_per_call: int = 20 * 1024 * 1024
    max_bytes_per_hook: int = 50 * 1024 * 1024
    max_pages: int = 5
    max_url_chars: int = 1800


@dataclass
class HookCalls:
    """What one hook call has spent on call-backs, and which lists it could read only in part."""

    limits: CallbackLimits = field(default_factory=CallbackLimits)
    calls: int = 0
    bytes: int = 0
    partial: dict[str, str] = field(default_factory=dict)  # prefetch key -> why

    def take_call(self) -> None:
        if self.calls >= self.limits.max_calls:
            count_refusal("callback-limit")
            raise CallbackRefused("call-back limit of this hook reached")
        self.calls += 1

    def take_bytes(self, n: int) -> None:
        self.bytes += n
        if self.bytes > self.limits.max_bytes_per_hook:
            count_refusal("callback-bytes-per-hook")
            raise CallbackRefused("call-back bytes of this hook exceeded")


_current: ContextVar[HookCalls | None] = ContextVar("cds_hook_calls", default=None)


def begin_hook(limits: CallbackLimits) -> Token[HookCalls | None]:
    """Start counting the call-backs of one hook call (tasks it spawns share the counter)."""
    return _current.set(HookCalls(limits))


def end_hook(token: Token[HookCalls | None]) -> None:
    _current.reset(token)


def current_calls() -> HookCalls:
    """This hook call's counter; outside a hook call, a fresh one with the default limits."""
    calls = _current.get()
    if calls is None:
        calls = HookCalls()
        _current.set(calls)
    return calls


def fhir_id_ok(value: str | None) -> bool:
    return isinstance(value, str) and FHIR_ID.match(value) is not None


def encode_id(value: str) -> str:
    """A FHIR id (or ``Type/id``) made safe for a URL: every reserved character percent-encoded."""
    return "/".join(quote(part, safe="") for part in value.split("/"))


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.username is not None or parts.password is not None or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    default = {"https": 443, "http": 80}.get(scheme)
    return scheme, parts.hostname.lower(), port if port is not None else default


def same_origin(url: str, base: str) -> bool:
    """Scheme, host and port of ``base``, and no user info."""
    mine = _origin(url)
    return mine is not None and mine == _origin(base)


_UNRESERVED_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _decode_unreserved(segment: str) -> str:
    """RFC 3986 §6.2.2.2: ``%66`` is ``f``; other escapes stay, upper-cased (``%2f`` → ``%2F``)."""

    def one(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _UNRESERVED_ESCAPE.sub(one, segment)


def _path_segments(url: str, *, strict: bool) -> tuple[str, ...] | None:
    """The URL's path as normalised segments (unreserved escapes decoded, ``.``/``..`` resolved,
    trailing ``/`` dropped); None when it cannot be compared safely.

    ``strict`` (a request's ``fhirServer``, re-audit #7): also None for a query, a fragment, user
    info, an encoded or back slash, or any ``.``/``..`` segment (also percent-encoded) — no real
    FHIR base has one, and a server may resolve it differently from us, so it is refused rather
    than resolved. The allow-list entries (operator-written) are only normalised."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if strict and (
        "?" in url or "#" in url or "@" in parts.netloc or "\\" in url
        or re.search(r"%(2f|5c)", url, re.IGNORECASE)
    ):
        return None
    out: list[str] = []
    for raw in parts.path.split("/")[1:]:
        segment = _decode_unreserved(raw)
        if segment in (".", ".."):
            if strict:
                return None
            if segment == ".." and out:
                out.pop()
            continue
        out.append(segment)
    while out and out[-1] == "":
        out.pop()
    return tuple(out)


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class CallbackPolicy:
    """Which ``fhirServer`` bases each trusted issuer may name (None: authentication is off)."""

    servers_by_issuer: dict[str, tuple[str, ...]] | None = None
    allow_loopback: bool = False

    def server_refusal(self, base: str, issuer: str | None) -> str | None:
        """Why no call-back may go to ``base`` for ``issuer`` (None: allowed)."""
        origin = _origin(base)
        path = _path_segments(base, strict=True)
        if origin is None or path is None:
            return "callback-server-not-allowed"
        scheme, host, _port = origin
        if scheme == "http":
            if _is_loopback(host) and self.allow_loopback:
                return None
            return "callback-server-not-allowed"
        if scheme != "https":
            return "callback-server-not-allowed"
        if self.servers_by_issuer is None:
            return None  # authentication off: a local trial
        allowed = self.servers_by_issuer.get(issuer or "", ())
        for entry in allowed:  # same origin, and the entry's path segments a prefix of base's
            prefix = _path_segments(entry, strict=False)
            if prefix is not None and same_origin(base, entry) and path[: len(prefix)] == prefix:
                return None
        return "callback-server-not-allowed"

    def refusal(self, request: HookRequest, issuer: str | None) -> str | None:
        """Why this request's ``fhirServer``/token must not be used (None: call-backs allowed)."""
        if request.fhirServer is None:
            return None
        reason = self.server_refusal(request.fhirServer, issuer)
        if reason is not None:
            return reason
        if not fhir_id_ok(request.context.patientId):
            return "callback-bad-id"
        if request.context.encounterId is not None and not fhir_id_ok(request.context.encounterId):
            return "callback-bad-id"
        auth = request.fhirAuthorization
        if auth is not None and auth.patient is not None:
            patient = auth.patient.strip()
            patient = patient[len("Patient/") :] if patient.startswith("Patient/") else patient
            if patient != request.context.patientId:
                return "callback-patient-mismatch"
        return None

    def apply(self, request: HookRequest, issuer: str | None) -> HookRequest:
        """The request as it may be served: without ``fhirServer`` and token when they must not be used."""
        reason = self.refusal(request, issuer)
        if reason is None:
            return request
        count_refusal(reason)
        log.warning("FHIR call-backs disabled for this hook: %s (the prefetch is still evaluated)", reason)
        return request.model_copy(update={"fhirServer": None, "fhirAuthorization": None})


def search_request(base: str, relative: str, max_url_chars: int) -> tuple[str, str, str | None]:
    """(method, url, form body): a GET, or ``POST {type}/_search`` when the URL would be too long."""
    url = f"{base.rstrip('/')}/{relative.lstrip('/')}"
    if len(url) <= max_url_chars or "?" not in relative:
        return "GET", url, None
    path, query = relative.lstrip("/").split("?", 1)
    return "POST", f"{base.rstrip('/')}/{path.rstrip('/')}/_search", query


async def read_json(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    headers: dict[str, str],
    form: str | None,
    calls: HookCalls,
) -> tuple[int, Any]:
    """(status, parsed body or None) of one call-back, streamed under the byte caps."""
    calls.take_call()
    limit = calls.limits.max_bytes_per_call
    send_headers = dict(headers)
    if form is not None:
        send_headers["Content-Type"] = "application/x-www-form-urlencoded"
    request = client.build_request(method, url, headers=send_headers, content=form)
    response = await client.send(request, stream=True)
    try:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            count_refusal("callback-bytes-per-call")
            raise CallbackRefused("call-back body too large")
        chunks: list[bytes] = []
        size = 0
        encoding = response.headers.get("content-encoding", "identity").lower()
        try:
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > limit:
                    count_refusal("callback-bytes-per-call")
                    raise CallbackRefused("call-back body too large")
                calls.take_bytes(len(chunk))
                chunks.append(chunk)
        except httpx.StreamConsumed:  # a transport that answered from memory (tests): already decoded
            encoding = "identity"
            chunks = [response.content]
            if len(response.content) > limit:
                count_refusal("callback-bytes-per-call")
                raise CallbackRefused("call-back body too large") from None
            calls.take_bytes(len(response.content))
    finally:
        await response.aclose()
    if response.status_code >= 400 or not any(chunks):
        return response.status_code, None
    raw = b"".join(chunks)
    if encoding not in ("identity", ""):
        raw = await anyio.to_thread.run_sync(_decode, raw, encoding, limit)
    return response.status_code, await anyio.to_thread.run_sync(_parse_fetched, raw)


def _parse_fetched(raw: bytes) -> Any:
    """A fetched body parsed and scrubbed; one nested past what can be walked is refused (the key is
    then unavailable and its card says so), never a RecursionError that became a 500.

    Parsed by ``json.loads`` as before (the request bodies' msgspec route of
    :mod:`cds_engine.service.json_body` meets the same recursion limit, so it would guard nothing
    more here); the guard is the RecursionError caught around parse and scrub.
    """
    try:
        return scrub_resources(json.loads(raw), "fetched")
    except RecursionError:
        count_refusal("callback-nesting")
        raise CallbackRefused("call-back body nested too deeply") from None


def _decode(raw: bytes, encoding: str, limit: int) -> bytes:
    """Decompress a gzip/deflate body without letting it grow past ``limit``."""
    import zlib

    if encoding not in ("gzip", "deflate"):
        raise CallbackRefused("unsupported content encoding")
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    out = decoder.decompress(raw, limit + 1)
    if len(out) > limit or decoder.unconsumed_tail:
        count_refusal("callback-bytes-per-call")
        raise CallbackRefused("call-back body too large")
    return out
