"""``bounds.scrub_may_change``'s one-pass pre-check (``_SUSPECT``) is a superset of its scans.

The check says False without running the negative-``value`` and date scans when ``_SUSPECT`` finds
nothing; that is only right if ``_SUSPECT`` matches every text on which those scans say True. These
texts are built to sit on the edges: years of every length and sign right after a quote (or not),
every trailing character the date scan reads, ``"value"`` with whitespace on either side of the colon.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_engine.service import bounds

_WS = st.sampled_from(["", " ", "  ", "   ", "\t", "\n ", " \r\n", "\x0b", "\x0c"])
_YEAR = st.sampled_from(["1899", "1900", "1999", "2000", "2099", "2100", "2199", "2200", "2201", "2299",
                         "0001", "0999", "9999", "19999", "01999", "0002000", "-2000", "-1999", "123", "2"])
_TAIL = st.sampled_from(['"', "-", "T", "\\", "x", "0", " ", ""])
_LEAD = st.sampled_from(['"', '"-', "-", "a", "0", "9", " ", '\\"', ""])


def _date(lead: str, year: str, month: str, tail: str) -> str:
    return f"{lead}{year}-{month}{tail}"


_DATES = st.builds(_date, _LEAD, _YEAR, st.sampled_from(["01", "12", "99", "1", "0a"]), _TAIL)
_VALUES = st.builds(lambda key, a, b, sign: f'"{key}"{a}:{b}{sign}1',
                    st.sampled_from(["value", "valu", "xvalue"]), _WS, _WS,
                    st.sampled_from(["-", "", "+", " -"]))
_NOISE = st.text(alphabet='"-:0129T\\ v', max_size=12)
_TEXTS = st.lists(st.one_of(_DATES, _VALUES, _NOISE), min_size=1, max_size=6).map("".join)


def _plain(raw: bytes) -> bool:
    return raw.isascii() and b"\\u" not in raw


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_TEXTS)
def test_the_pre_check_matches_wherever_the_scans_flag(text: str) -> None:
    raw = text.encode()
    if bounds._flagged_by_scans(raw):
        assert bounds._SUSPECT.search(raw) is not None, text
    if _plain(raw):  # no non-ASCII text, no \u escape: the answer is the scans' alone, as before
        assert bounds.scrub_may_change(raw) is bounds._flagged_by_scans(raw), text


@pytest.mark.parametrize(
    "text",
    [
        '"1899-01"', '"-2000-01-01"', '"19999-01T"', '"2201-12\\\\"', '"0001-01-"', '"2300-01"',
        '"value":-1', '"value" : -1', '"value"\t:\n -1', '"value"  :  -1', '"value"   :-1',
        '"value":   -1', '{"value": -0.5}',
    ],
)
def test_each_kind_of_trigger_is_seen_by_the_pre_check(text: str) -> None:
    raw = text.encode()
    assert bounds._flagged_by_scans(raw)
    assert bounds._SUSPECT.search(raw) is not None
    assert bounds.scrub_may_change(raw)


@pytest.mark.parametrize(
    "text",
    ['{"d": "1900-01-01"}', '{"d": "2200-12-31T00:00:00Z"}', '{"d": "2024-05"}', '{"valueDecimal": -71.1}',
     '{"id": "a1b2-c3d4"}', '{"code": "2160-0"}', '{"x": "12-34"}', '{"x": [1, -2]}'],
)
def test_clean_texts_pass_the_pre_check(text: str) -> None:
    raw = text.encode()
    assert bounds._SUSPECT.search(raw) is None
    assert not bounds.scrub_may_change(raw)
