"""One value per loaded pack, dropped with the pack: what per-call code derives from a pack once.

Why: alerts and cards repeat per call what depends only on the pack (approval sentence, sources,
override reasons …). A hot reload makes a new :class:`~cds_engine.rules.compile.CompiledPack`
object, so keying by the object (its ``id`` with a weak reference, so a recycled id never returns
another pack's value) gives each loaded pack its own value, forgotten when the pack is.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["PackMemo"]

T = TypeVar("T")


class PackMemo(Generic[T]):
    """``memo.get(pack)``: ``build(pack)`` once per pack object (a race only builds it twice)."""

    def __init__(self, build: Callable[[Any], T], *, valid: Callable[[T, Any], bool] | None = None) -> None:
        self._build = build
        self._valid = valid  # a held value still right for this pack (else it is built again)
        self._held: dict[int, tuple[weakref.ref[Any], T]] = {}
        self._lock = threading.Lock()

    def get(self, pack: Any) -> T:
        key = id(pack)
        held = self._held.get(key)
        if held is not None and held[0]() is pack and (self._valid is None or self._valid(held[1], pack)):
            return held[1]
        value = self._build(pack)
        with self._lock:
            self._held[key] = (weakref.ref(pack, lambda _ref, key=key: self._held.pop(key, None)), value)
        return value
