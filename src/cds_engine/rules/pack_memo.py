"""One value per loaded pack, dropped with the pack: what per-call code derives from a pack once.

Why: alerts and cards repeat per call what depends only on the pack (approval sentence, sources,
override reasons …). A hot reload makes a new :class:`~cds_engine.rules.compile.CompiledPack`
object, so keying by the object (its ``id`` with a weak reference, so a recycled id never returns
another pack's value) gives each loaded pack its own value, forgotten when the pack is.

:func:`remember` is the same weak keying for the hot paths' own tables (compiled trees, a tree's
leaves, a tier's evidence plan): they are read inline (``held[0]() is obj``), and must not keep an
old pack's objects alive after a hot reload (tables that held them strongly until a size limit
kept the trees of thousands of old tiers: every reload grew the process).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["PackMemo", "remember"]

T = TypeVar("T")
WeakTable = dict[int, tuple[weakref.ref[Any], T]]


def remember(table: WeakTable[T], obj: Any, value: T) -> T:
    """Put ``value`` in ``table`` under ``id(obj)``, holding ``obj`` weakly; returns ``value``.

    Why weakly: the entry must go when ``obj`` does (a reloaded pack's trees are freed with it),
    and a reader checks ``held[0]() is obj`` so a recycled id never returns another object's value.
    The value must not refer to ``obj`` itself (it would keep it alive). The callback removes only
    its own entry: a cleared table may hold a newer entry under that id by then.
    """
    key = id(obj)

    def forget(ref: weakref.ref[Any], key: int = key) -> None:
        held = table.get(key)
        if held is not None and held[0] is ref:
            table.pop(key, None)

    try:
        held = weakref.ref(obj, forget)
    except TypeError:  # an object that takes no weak reference (a stand-in): answered, not kept
        return value
    table[key] = (held, value)
    return value


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
        try:
            ref = weakref.ref(pack, lambda _ref, key=key: self._held.pop(key, None))
        except TypeError:  # a pack-like object that takes no weak reference (a stand-in): not kept
            return value
        with self._lock:
            self._held[key] = (ref, value)
        return value
