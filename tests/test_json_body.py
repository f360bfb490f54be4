"""msgspec-parsed request bodies answer exactly as ``json.loads`` did; the scrub pre-check is safe.

:mod:`cds_engine.service.json_body` lets msgspec accept a body and the stdlib decide everything
else; :func:`cds_engine.service.bounds.scrub_may_change` lets a hook call skip the walk over the
prefetched record when the JSON text shows nothing the walk could remove (issue 19).
"""

from __future__ import annotations

import copy
import json
from typing import Annotated, Any

import pytest
from fastapi import Body, FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_engine.service.bounds import scrub_may_change, scrub_resources
from cds_engine.service.json_body import FastJsonRequest, FastJsonRoute

EDGE_BODIES = [
    b'{"a":1,"a":2}', b'{"a": 123456789012345678901234567890}', b'{"a": -9223372036854775809}',
    b'{"a": 1e400}', b'{"a": -1e400}', b'{"a": 1.5e-400}', b'{"a": NaN}', b'{"a": Infinity}',
    b'{"a": "\\ud800"}', b'{"a":"\xed\xa0\x80"}', b'\xef\xbb\xbf{"a":1}', '{"a":1}'.encode("utf-16"),
    '{"a":1}'.encode("utf-16-le"), '{"a":1}'.encode("utf-32"), b'{"a":"\x01"}', b'{"a":"\xff"}',
    b'{"a":1}\x00', b'{"a":-0}', b'{"a":-0.0}', b'{"a":0.1}', b'{"a":01}', b'{"a":.5}', b'{"a":1.}',
    b'{"a":"\\u0000"}', b'{"a":tru}', b'{"a":1,}', b"", b" ", b'{"\\ud83d\\ude00":"\\ud83d\\ude00"}',
    b'{"a":"\t"}', b'{"a":1} x', b'"x"', b'{"a":4.9e-324}', b'{"a":0.30000000000000004}',
    b'{"a":"\xf0\x9f\x98\x80"}', b'{"a":"\xc0\xaf"}', b"[" * 200 + b"]" * 200,
]


def _outcome(parse: Any, body: bytes) -> tuple[str, Any]:
    try:
        return "ok", repr(parse(body))
    except Exception as exc:  # the exception type is the outcome
        return "error", type(exc).__name__


@pytest.fixture(scope="module")
def echo() -> TestClient:
    app = FastAPI()
    app.router.route_class = FastJsonRoute

    @app.post("/echo")
    async def echo_body(request: FastJsonRequest, body: Annotated[Any, Body()]) -> dict[str, Any]:
        return {"body": repr(body), "msgspec": request.parsed_by_msgspec}

    return TestClient(app)


@pytest.mark.parametrize("body", EDGE_BODIES)
def test_a_body_parses_exactly_as_json_loads(echo, body):
    expected = _outcome(json.loads, body)
    response = echo.post("/echo", content=body, headers={"content-type": "application/json"})
    if expected[0] == "ok":
        assert response.status_code == 200 and response.json()["body"] == expected[1]
    else:
        assert response.status_code in (400, 422)


def test_msgspec_is_named_only_for_bodies_it_accepted(echo):
    ok = echo.post("/echo", content=b'{"a": 1.5}', headers={"content-type": "application/json"}).json()
    assert ok["msgspec"] is True
    fallback = echo.post("/echo", content=b'{"a": NaN}', headers={"content-type": "application/json"}).json()
    assert fallback["msgspec"] is False and fallback["body"] == repr({"a": float("nan")})


def _deepest_accepted(client: TestClient) -> int:
    low, high = 100, 3000
    while low < high:
        mid = (low + high + 1) // 2
        body = b"[" * mid + b"]" * mid
        answer = client.post("/echo", content=body, headers={"content-type": "application/json"})
        if answer.status_code == 200:
            low = mid
        else:
            high = mid - 1
    return low


def test_the_recursion_limit_is_met_at_the_same_depth_as_before():
    """The route adds no frame: a body nested to the stdlib's limit is accepted exactly as before."""

    def build(route_class: Any) -> TestClient:
        app = FastAPI()
        if route_class is not None:
            app.router.route_class = route_class

        @app.post("/echo")
        async def echo_body(body: Annotated[Any, Body()]) -> int:
            return 1

        return TestClient(app)

    assert _deepest_accepted(build(FastJsonRoute)) == _deepest_accepted(build(None))


RECORD = {
    "resourceType": "Bundle",
    "entry": [{"resource": {"resourceType": "Observation", "effectiveDateTime": "2024-01-02T03:04:05Z",
                            "valueQuantity": {"value": 1.5, "unit": "mg/dL"}, "code": {"text": "2160-0"},
                            "extension": [{"valueDecimal": -74.1}],
                            "note": [{"text": "a: -5, 1800-01-01"}]}}],
}


@pytest.mark.parametrize(
    ("replace", "flagged"),
    [
        (None, False),
        (("2024-01-02T03:04:05Z", "0001-01-01"), True),
        (("2024-01-02T03:04:05Z", "1899-12-31"), True),
        (("2024-01-02T03:04:05Z", "2201-01-01"), True),
        (("2024-01-02T03:04:05Z", "-2000-01-01"), True),
        (("2024-01-02T03:04:05Z", "19999-01-01"), True),
        (("2024-01-02T03:04:05Z", "1900-01-01"), False),
        (("2024-01-02T03:04:05Z", "2200-12-31"), False),
        (('"value": 1.5', '"value": -1.5'), True),
        (('"value": 1.5', '"value":-0'), True),
        (('"effectiveDateTime": "2024', '"effectiveDateTime": "\\u0032024'), True),
        (('"value": 1.5', '"\\u0076alue": -1.5'), True),
        (("2024-01-02T03:04:05Z", "1" * 5000 + "-01-01"), True),
        (("2024-01-02T03:04:05Z", "0001-\u0661\u0662"), True),  # scrub reads other scripts' digits
        (("2024-01-02T03:04:05Z", "0001-0\u0662"), True),
        (("2024-01-02T03:04:05Z", "0001-01"), True),
        (("2024-01-02T03:04:05Z", "0001-01\\n"), True),  # JSON "\n": _DATE's $ allows it
        (("2024-01-02T03:04:05Z", "0001-01T"), True),
        (("2024-01-02T03:04:05Z", "00310092-3bd4-4c1e"), False),  # an id, not a date
        (("2024-01-02T03:04:05Z", "00310092-34d4-4c1e"), False),
        (("2024-01-02T03:04:05Z", "0\u0660\u0660\u0661-01-01"), True),
        (("2024-01-02T03:04:05Z", "-\u0661\u0669\u0669\u0669-01-01"), True),
    ],
)
def test_scrub_may_change_flags_every_trigger(replace, flagged):
    raw = json.dumps(RECORD)
    if replace is not None:
        raw = raw.replace(*replace)
    body = raw.encode()
    assert scrub_may_change(body) is flagged
    if not flagged:  # and, when not flagged, the walk indeed removes nothing
        assert scrub_resources(json.loads(body), "prefetch") == json.loads(body)
    elif "\\u066" in raw:  # the other scripts' digits as UTF-8 text, not escaped: still flagged
        assert scrub_may_change(json.dumps(json.loads(body), ensure_ascii=False).encode())


@pytest.mark.parametrize("text", [json.dumps(RECORD), json.dumps(RECORD).replace("1.5", "2")])
def test_an_unflagged_body_is_one_scrub_leaves_unchanged(text):
    raw = text.encode()
    assert not scrub_may_change(raw)
    parsed = json.loads(raw)
    assert scrub_resources(copy.deepcopy(parsed), "prefetch") == parsed


_DATEISH = st.text(alphabet="-0123456789T:Z.+ab\n\u0660\u0661\u0669\uff11", max_size=14)
_LEAF = st.one_of(
    _DATEISH, st.integers(-5, 3000), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
    st.none(),
)
_KEYS = st.sampled_from(["value", "valueDecimal", "code", "date", "text", "id", "effectiveDateTime", "x"])
_TREES = st.recursive(
    _LEAF,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=_TREES, ascii_only=st.booleans())
def test_whenever_the_check_says_no_change_the_walk_changes_nothing(tree, ascii_only):
    raw = json.dumps({"k": tree}, ensure_ascii=ascii_only).encode()
    if scrub_may_change(raw):
        return
    parsed = json.loads(raw)
    assert scrub_resources(copy.deepcopy(parsed), "prefetch") == parsed
