"""An ``lru_cache`` for pure functions of client text that never holds a long text.

Why: the card-text and spelling functions (``facts/names.py``, ``facts/normalize.py``) are pure and
see the same short texts again and again (the co-medicines of many drafts), so a cache pays. But
their texts come from clients, and a request body may be 10 MB: a cache bounded by count alone let
a client pin ``maxsize`` texts of any length for the life of the process (months, for the service).
So a text longer than ``max_chars`` is worked out each time — the same answer, the functions being
pure — and never enters the cache; the count bound then also bounds the bytes held.

The pattern was written by hand four times (a public wrapper testing the length, a private cached
twin); :func:`bounded_text_cache` is that pattern once. The decorated function keeps
``cache_info()``, ``cache_clear()`` and ``__wrapped__`` (the undecorated function) as
``functools.lru_cache`` gives them, so tests that read the private twins' counts read the same ones,
and a call costs about what a hand-written wrapper cost.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

__all__ = ["CLIENT_TEXT_CHARS", "BoundedTextCache", "bounded_text_cache"]

#: how long a client text the card-text and spelling caches remember (a longer one is worked out
#: each time); one bound for all of them (names.py and normalize.py each had its own copy)
CLIENT_TEXT_CHARS = 256

R = TypeVar("R", covariant=True)


class BoundedTextCache(Protocol[R]):
    """What :func:`bounded_text_cache` returns: the function, plus ``lru_cache``'s attributes."""

    __wrapped__: Callable[..., R]
    max_chars: int

    def __call__(self, text: Any, /, *args: Any) -> R: ...

    def cache_info(self) -> functools._CacheInfo:
        """Hits, misses, maxsize and current size (calls with a long text count in none of them)."""
        ...

    def cache_clear(self) -> None:
        """Forget every remembered answer."""
        ...


def bounded_text_cache(maxsize: int, max_chars: int) -> Callable[[Callable[..., R]], BoundedTextCache[R]]:
    """Decorate a pure function of a text: ``lru_cache(maxsize)``, bypassed for texts over ``max_chars``.

    The text is the first argument; the decorated function takes its arguments by position (as
    every caller passes them). When the text is longer than ``max_chars`` the function runs
    uncached and nothing is stored or counted; any other call (a shorter text, ``None``) goes
    through the ``lru_cache``. The length test is the hand-written wrappers' own
    (``text is not None and len(text) > max_chars``): a text of another type fails as it failed
    before. Use it only on pure functions whose answers are immutable: a remembered answer is shared.
    """
    if max_chars < 0:
        raise ValueError(f"max_chars must be 0 or more, not {max_chars}")

    def decorate(func: Callable[..., R]) -> BoundedTextCache[R]:
        cached = functools.lru_cache(maxsize=maxsize)(func)

        @functools.wraps(func)  # name, doc, signature, __wrapped__ = func; pickles by its name
        def call(text: Any, /, *args: Any) -> R:
            if text is not None and len(text) > max_chars:
                return func(text, *args)
            return cached(text, *args)

        call.cache_info = cached.cache_info  # type: ignore[attr-defined]
        call.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
        call.max_chars = max_chars  # type: ignore[attr-defined]
        return cast(BoundedTextCache[R], call)

    return decorate
