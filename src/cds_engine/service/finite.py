"""Refuse non-finite numbers (``NaN``, ``Infinity``) anywhere in a request.

Python's JSON parser accepts these literals although JSON does not. A ``NaN`` dose or eGFR
compares false with every threshold, so a rule would silently not fire — the one outcome a
safety check must never have. ``-Infinity`` happens to trip the negative-dose check, ``Infinity``
a maximum-dose rule with an "inf mg" message; all three are entry errors, answered with a 400 that
names the field.
"""

from __future__ import annotations

import math
from typing import Any

from cds_engine.service.errors import HookError

__all__ = ["first_non_finite", "require_finite"]


def first_non_finite(value: Any, path: str = "") -> str | None:
    """The path of the first float that is NaN or infinite (``None``: all finite)."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:  # iterative: a deeply nested body must not exhaust the recursion limit
        item, where = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return where or "body"
        elif isinstance(item, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in reversed(item.items()))
        elif isinstance(item, list | tuple):
            stack.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(item))))
    return None


def require_finite(value: Any, path: str = "") -> None:
    """Raise a 400 naming the field when ``value`` holds a non-finite number."""
    where = first_non_finite(value, path)
    if where is not None:
        raise HookError(400, where, "must be a finite number (NaN and Infinity are not JSON)")
