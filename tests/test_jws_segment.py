"""``auth._OneParseJWS`` decodes a token segment exactly as PyJWT does (its alphabet check in C).

Same bytes back, or the same ``DecodeError`` with the same message, for plain segments, padded
ones, lengths of every remainder mod 4, non-canonical last characters and junk.
"""

from __future__ import annotations

from typing import Any

import jwt
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_engine.service.auth import _OneParseJWS

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_SEGMENTS = st.one_of(
    st.text(alphabet=_ALPHABET, max_size=40),
    st.text(alphabet=_ALPHABET + "=", max_size=40),
    st.text(alphabet=_ALPHABET + "=!+/ .", max_size=12),
    st.sampled_from(["eyJhbGciOiJFUzM4NCJ9", "AB", "ABC", "ABD", "A", "AB==", "ABC=", "A===", "QQ", "QR",
                     "=="]),
).map(str.encode)


def _outcome(decode: Any, segment: bytes) -> tuple[str, Any]:
    try:
        return "ok", decode(segment, "header")
    except jwt.DecodeError as exc:
        return type(exc).__name__, str(exc)


@settings(max_examples=2000, deadline=None)
@given(segment=_SEGMENTS)
def test_a_segment_decodes_as_pyjwt_decodes_it(segment: bytes) -> None:
    assert _outcome(_OneParseJWS._decode_base64url_segment, segment) == _outcome(
        jwt.PyJWS._decode_base64url_segment, segment)
