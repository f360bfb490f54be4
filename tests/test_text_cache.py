"""``facts/text_cache.bounded_text_cache``: an lru_cache that never holds a text over its bound.

Why these tests: the decorator replaced four hand-written copies of "cache short client texts, work
long ones out each time" (a client could otherwise pin 4,096 texts of up to 10 MB each per cache).
A decorator that cached long texts, or answered differently from the undecorated function, or lost
``cache_info``/``cache_clear``/``__wrapped__`` (which other tests read) would be silent in use.
"""

from __future__ import annotations

import inspect
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_engine.facts import names, normalize
from cds_engine.facts.text_cache import BoundedTextCache, bounded_text_cache

LIMIT = 8


def _counted() -> tuple[list[str | None], BoundedTextCache[str | None]]:
    """A pure function of a text that records every time its body runs."""
    seen: list[str | None] = []

    @bounded_text_cache(maxsize=3, max_chars=LIMIT)
    def shout(text: str | None, suffix: str = "!") -> str | None:
        """Upper-cased text and a suffix."""
        seen.append(text)
        return None if text is None else text.upper() + suffix

    return seen, shout


def test_short_text_is_worked_out_once() -> None:
    seen, shout = _counted()
    assert shout("abc") == shout("abc") == "ABC!"
    assert seen == ["abc"]
    info = shout.cache_info()
    assert (info.hits, info.misses, info.currsize, info.maxsize) == (1, 1, 1, 3)


def test_long_text_is_worked_out_each_time_and_never_held() -> None:
    seen, shout = _counted()
    long = "x" * (LIMIT + 1)
    assert shout(long) == shout(long) == "X" * (LIMIT + 1) + "!"
    assert seen == [long, long]
    info = shout.cache_info()
    assert (info.hits, info.misses, info.currsize) == (0, 0, 0)


def test_the_bound_is_inclusive() -> None:
    """A text of exactly ``max_chars`` is remembered (as the hand-written ``len(text) > N`` did)."""
    seen, shout = _counted()
    edge = "y" * LIMIT
    shout(edge)
    shout(edge)
    assert seen == [edge]
    assert shout.cache_info().currsize == 1


def test_none_and_other_arguments_go_through_the_cache() -> None:
    seen, shout = _counted()
    assert shout(None) is None
    assert shout(None) is None
    assert shout("ab", "?") == "AB?"
    assert shout("ab") == "AB!"  # the other arguments are part of the key
    assert seen == [None, "ab", "ab"]
    assert shout.cache_info().hits == 1


def test_the_count_bound_holds_and_cache_clear_forgets() -> None:
    seen, shout = _counted()
    for n in range(10):
        shout(f"t{n}")
    assert shout.cache_info().currsize == 3
    shout.cache_clear()
    assert shout.cache_info().currsize == 0
    shout("t9")
    assert seen[-1] == "t9" and len(seen) == 11


def test_the_decorated_function_keeps_its_identity() -> None:
    """Name, docstring, signature and ``__wrapped__`` are the function's; it pickles by name."""
    assert normalize.normalize_route.__name__ == "normalize_route"
    assert "route family" in (normalize.normalize_route.__doc__ or "")
    assert str(inspect.signature(normalize.display_text)) == (
        "(text: 'str | None', limit: 'int' = 40) -> 'str | None'")
    assert normalize.display_text.__wrapped__("a*b", 40) == "a\\*b"
    assert pickle.loads(pickle.dumps(normalize.normalize_route)) is normalize.normalize_route
    with pytest.raises(ValueError, match="max_chars"):
        bounded_text_cache(maxsize=1, max_chars=-1)


_REAL = (
    (normalize.normalize_route, ()),
    (normalize.form_from_text, ()),
    (normalize.display_text, ()),
    (normalize.display_text, (60,)),
    (names._clean, ()),
)
_EDGE = ["", " ", "PO", " Oral ", "by mouth", "Oral route", "intra_thecal", "drug 10 mg/5 mL oral solution",
         "Topical Solution", "a*b_[c](d)<e>#|!~", "tab\tline\nbreak\x00\x1b", "ünïcödé 10 µg", "x" * 256,
         "tablet " + "x" * 249, "tablet " + "x" * 250, "capsule " * 400]


@pytest.mark.parametrize("text", [None, *_EDGE])
def test_the_real_functions_answer_as_undecorated(text: str | None) -> None:
    for func, extra in _REAL:
        if text is None and func is names._clean:
            continue  # names are never None (medicine_name says "unnamed" first)
        expected = func.__wrapped__(text, *extra)
        assert func(text, *extra) == expected  # first sight
        assert func(text, *extra) == expected  # again (from the cache when short)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_any_text_answers_as_undecorated(text: str) -> None:
    for func, extra in _REAL:
        expected = func.__wrapped__(text, *extra)
        assert func(text, *extra) == expected
        assert func(text, *extra) == expected
