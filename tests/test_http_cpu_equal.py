"""Issue 19 (HTTP/auth CPU per hook call): each faster path answers exactly as the code it replaced.

* ``bounds.scrub_may_change`` finds date candidates on a digits-as-zero copy of the body: equal to
  the one-regex reference (``_scrub_may_change_by_pattern``) on every ASCII JSON text without
  ``\\u`` escapes; other texts (accented names, a zero-width space) no longer always walk, and
  whenever it says nothing can change, the walk changes nothing.
* ``bounds.first_bad_text`` proves a clean value clean by a tight loop first: same verdict (and,
  when there is one, the same first path) as the ordered walk alone.
* ``auth.JwtVerifier`` decodes a token's parts once for its two reads: same claims and the same
  refusals as PyJWT's module functions; a JWK dict edited in place is parsed again.
* ``middleware.LoggedAndTimedMiddleware``: the same log line and metric observation as the request
  log inside the timing middleware.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_engine import metrics
from cds_engine.service import bounds
from cds_engine.service.auth import AuthError, AuthSettings, JwtVerifier, TrustedIssuer, _OneParseJWS
from cds_engine.service.bounds import scrub_may_change
from cds_engine.service.metrics_http import route_label
from cds_engine.service.middleware import LoggedAndTimedMiddleware
from service_helpers import Signer

# ── scrub_may_change ───────────────────────────────────────────────────────────────────────
_DATEISH = st.text(alphabet="-0123456789T:Z.+\"\\ab\n\u0660\uff11é", max_size=16)
_YEARS = st.sampled_from(["1899", "1900", "2200", "2201", "0001", "-2000", "01999", "019999", "0001999",
                          "19999", "2024", "2100", "2199", "9999", "0000", "-0000"])
_DATES = st.builds(lambda y, m, tail: f"{y}-{m}{tail}", _YEARS, st.sampled_from(["01", "12", "1", "0\u0662"]),
                   st.sampled_from(["", "-02", "T03:04", "-02T03:04:05Z", "\n", "x", "-", "-0"]))
_LEAF = st.one_of(_DATEISH, _DATES, st.integers(-5, 3000), st.floats(allow_nan=False, allow_infinity=False),
                  st.booleans(), st.none())
_KEYS = st.sampled_from(
    ["value", "valueDecimal", "code", "date", "text", "id", "effectiveDateTime", "x", "\\"])
_TREES = st.recursive(
    _LEAF, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=24,
)


def _plain(raw: bytes) -> bool:
    return raw.isascii() and b"\\u" not in raw


def _check(raw: bytes) -> None:
    """Equal to the reference where it applies; else, when it says no, the walk removes nothing."""
    said = scrub_may_change(raw)
    if _plain(raw):
        assert said is bounds._scrub_may_change_by_pattern(raw)
    elif not said:
        parsed = json.loads(raw)
        assert bounds.scrub_resources(copy.deepcopy(parsed), "prefetch") == parsed


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=_TREES, ascii_only=st.booleans(), compact=st.booleans())
def test_the_check_equals_the_reference_or_is_safe(tree: Any, ascii_only: bool, compact: bool) -> None:
    separators = (",", ":") if compact else None
    _check(json.dumps({"k": tree}, ensure_ascii=ascii_only, separators=separators).encode())


@settings(max_examples=600, deadline=None)
@given(raw=st.binary(max_size=80) | st.text(alphabet='"-0129T\\u5a', max_size=60).map(str.encode))
def test_on_other_ascii_bytes_it_is_never_less_cautious(raw: bytes) -> None:
    if _plain(raw) and bounds._scrub_may_change_by_pattern(raw):
        assert scrub_may_change(raw)


@pytest.mark.parametrize(
    "text",
    [
        '"0001-01"', '"1999-01"', '"-1999-01-01"', '"x":"20000-01-01"', '["0001999-01"]', '"019999-01"',
        '"1234567-01"', '"12345678-01"', '"2200-12-31T00"', '"2201-01\\n"', "2024-01-01", '"a2024-01"',
        '"value" : -1', '"value":1,"v":-1', "0000-01" * 3, '"' + "1" * 500 + '-01"',
        '"x": "' + "\\n" * 70 + '\\u0031999-01"', '"x": "' + "\\n" * 70 + '"', '"\\\\u0031"',
        '"x": "' + "\\n" * 70 + '\\u00e9"',
    ],
)
def test_edge_cases_equal_the_reference(text: str) -> None:
    raw = text.encode()
    if _plain(raw):
        assert scrub_may_change(raw) is bounds._scrub_may_change_by_pattern(raw)
    else:
        assert scrub_may_change(raw)  # these escapes spell ASCII


def test_the_benchmark_bodies_get_the_same_answer() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import hook_cpu  # the service benchmarks' bodies: Synthea patients, varied drafts


    for _, body in hook_cpu.corpus(10, 3):
        for raw in (json.dumps(body).encode(), json.dumps(body, ensure_ascii=False).encode()):
            _check(raw)


@pytest.mark.parametrize(
    ("text", "walks"),
    [
        ('"Ram\\u00f3n", "1950-01-01"', False),  # an accented name: nothing the scans could miss
        ('"Ram\u00f3n", "1950-01-01"', False),  # the same as UTF-8
        ('"a\\u200bb", "1950-01-01"', False),  # a zero-width space
        ('"1800-01-01\\u00e9"', True),  # the date is still read (and its year is out of range)
        ('"\\u0661\\u0669\\u0669\\u0669-01-01"', True),  # another script's digits, escaped
        ('"\u0661800-01-01"', True),  # and as UTF-8
        ('"1\\ud835\\udfce00-01-01"', True),  # a surrogate pair (here an astral digit)
        ('"\\u0031800-01-01"', True),  # an escaped ASCII digit
        ('"\\u00zz"', True),  # not an escape that parses
    ],
)
def test_non_ascii_text_walks_only_when_it_could_matter(text: str, walks: bool) -> None:
    raw = ("[" + text + "]").encode()
    assert scrub_may_change(raw) is walks
    if not walks:
        parsed = json.loads(raw)
        assert bounds.scrub_resources(copy.deepcopy(parsed), "prefetch") == parsed


# ── first_bad_text ─────────────────────────────────────────────────────────────────────────
def _walked(value: Any, path: str) -> tuple[str, str] | None:
    """first_bad_text as it was: the ordered walk alone."""
    for item, where, parent, key in bounds._walk(value, path):
        if isinstance(parent, dict) and isinstance(key, str):
            why = bounds._bad_string(key)
            if why is not None:
                return bounds._path(where), f"a member name {why}"
        if isinstance(item, str):
            why = bounds._bad_string(item)
            if why is not None:
                return bounds._path(where), why
            if key not in bounds._NOT_DATES and bounds._date_out_of_range(item):
                return bounds._path(where), f"a date must lie between {bounds.MIN_YEAR} and {bounds.MAX_YEAR}"
    return None


_TEXTS = st.one_of(_DATES, _DATEISH, st.sampled_from(
    ["a\x00b", "\ud800", "ok", "", "\u0661\u0669\u0669\u0669-01-01", "1\u0660\u0660\u0660-01-01"]))
_CONTEXTS = st.recursive(
    st.one_of(_TEXTS, st.integers(), st.none()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(_KEYS, st.sampled_from(["k\x00", "\udc00", "display", "reference"])),
                        inner, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_CONTEXTS)
def test_the_context_check_reports_what_the_walk_reports(value: Any) -> None:
    assert bounds.first_bad_text(value, "context") == _walked(value, "context")


# ── JWT: one decode of the token's parts ───────────────────────────────────────────────────
AUD = "http://svc.local/cds-services/baclofen-order-sign"


def _verifier(signer: Signer) -> JwtVerifier:
    return JwtVerifier(AuthSettings(issuers={signer.issuer: TrustedIssuer(jwks=signer.jwks())}))


def test_the_verified_claims_are_pyjwts() -> None:
    signer = Signer()
    verifier = _verifier(signer)
    tokens = [signer.token(AUD) for _ in range(3)]
    key = jwt.PyJWK(signer.jwks()["keys"][0], algorithm="ES384")
    for token in tokens:
        expected = jwt.decode(token, key=key, algorithms=["ES384"], audience=[AUD], issuer=signer.issuer,
                              leeway=60, options={"require": ["iss", "aud", "exp", "iat", "jti"]})
        assert asyncio.run(verifier.verify(token, AUD)) == expected


def test_a_token_is_judged_on_its_own_parts_whatever_came_before() -> None:
    signer, other = Signer(), Signer(kid="other-kid")
    verifier = _verifier(signer)
    good = signer.token(AUD)
    head, _payload, sig = signer.token(AUD).split(".")
    forged = ".".join([head, good.split(".")[1], sig])  # another token's signature
    assert asyncio.run(verifier.verify(good, AUD))["iss"] == signer.issuer
    with pytest.raises(AuthError, match="InvalidSignatureError"):
        asyncio.run(verifier.verify(forged, AUD))
    with pytest.raises(AuthError, match="jti replayed"):
        asyncio.run(verifier.verify(good, AUD))
    with pytest.raises(AuthError, match="unknown kid"):
        asyncio.run(verifier.verify(other.token(AUD), AUD))
    with pytest.raises(AuthError, match="malformed token"):
        asyncio.run(verifier.verify(good[:-3] + "!!!", AUD))


def test_the_remembered_parts_are_those_pyjws_decodes() -> None:
    token = Signer().token(AUD)
    jws = _OneParseJWS()
    first = jws._load(token)
    assert first == jwt.api_jws._jws_global_obj._load(token)
    assert jws._load(token) is first  # the second read of the same token
    assert jws._load(token.encode()) == first  # bytes: decoded again, equal
    with pytest.raises(jwt.DecodeError):
        jws._load("a.b")


def test_a_jwk_edited_in_place_is_parsed_again() -> None:
    signer, rotated = Signer(), Signer()
    jwks = signer.jwks()
    verifier = JwtVerifier(AuthSettings(issuers={signer.issuer: TrustedIssuer(jwks=jwks)}))
    jwk = verifier.settings.issuers[signer.issuer].jwks["keys"][0]  # type: ignore[index]
    first = verifier._parsed_key(jwk, "ES384")
    assert verifier._parsed_key(jwk, "ES384") is first
    jwk.update({k: v for k, v in rotated.jwks()["keys"][0].items() if k in ("x", "y")})
    second = verifier._parsed_key(jwk, "ES384")
    assert second is not first and second.key.public_numbers() != first.key.public_numbers()


# ── one middleware for the log line and the timing ─────────────────────────────────────────
class _Timer:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def child(self, service: str, status: str) -> _Timer:
        self.seen.append((service, status))
        return self

    def observe(self, seconds: float) -> None:
        assert seconds >= 0


async def _inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"].endswith("/boom"):
        raise RuntimeError("boom")
    scope.setdefault("state", {})["log"] = {"service": "x", "rules": ["A", "B"]}
    await send({"type": "http.response.start", "status": 404 if "missing" in scope["path"] else 200,
                "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def _run(app: Any, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "state": {}}
    with contextlib.suppress(RuntimeError):
        asyncio.run(app(scope, receive, send))
    return sent


# (path, the log line's method/path/status, the metric child observed: None = not timed)
_LOGGED_AND_TIMED = [
    ("/cds-services/baclofen-order-sign", ["POST", "/cds-services/baclofen-order-sign", "200"],
     [(route_label("/cds-services/baclofen-order-sign"), "2xx")]),
    ("/cds-services/x/missing", ["POST", "/cds-services/x/missing", "404"], [("other", "4xx")]),
    ("/metrics", ["POST", "/metrics", "200"], []),
    ("/evaluate/boom", ["POST", "/evaluate/boom", "500"], [("evaluate", "5xx")]),
    ("/", ["POST", "/", "200"], [("other", "2xx")]),
]


@pytest.mark.parametrize(("path", "line", "timed"), _LOGGED_AND_TIMED)
def test_one_layer_logs_and_times_every_request(
    path: str, line: list[str], timed: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The line and the observation the two former layers made (a log middleware inside a
    metrics middleware; compared with them when they were merged): an exception is logged as 500
    and timed as 5xx, /metrics is logged but not timed, the route's fields end the line."""
    timer = _Timer()
    monkeypatch.setattr(metrics, "REQUEST_SECONDS", timer)
    with caplog.at_level(logging.INFO, logger="cds_engine.service"):
        sent = _run(LoggedAndTimedMiddleware(_inner), path)
    lines = [r.getMessage().split(" ") for r in caplog.records if r.name == "cds_engine.service"]
    assert len(lines) == 1
    assert lines[0][:3] == line and lines[0][3].endswith("ms")
    if not path.endswith("/boom"):
        assert lines[0][4:] == ["service=x", "rules=A,B"]
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert timer.seen == timed


def test_other_scopes_pass_through_untouched() -> None:
    seen = []

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    asyncio.run(LoggedAndTimedMiddleware(inner)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]
