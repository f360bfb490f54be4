"""Bounds on what a hook request may carry: refused in the context, made unknown in fetched data.

In ``context`` (the draft orders are the input the advice is about) a NUL character, a lone
surrogate or a date outside 1900–2200 is an entry error: 400 naming the field, never echoing the
value. A NUL cannot be stored in PostgreSQL text, a lone surrogate cannot be encoded as UTF-8
(logs, store), and a sentinel date (``0001-01-01``) would turn into an age or a duration that
means nothing.

Prefetched and fetched resources are the EHR's record, and legacy records carry such values
(sentinel dates, a negative or non-finite number from a broken interface): there the element is
removed — it becomes *unknown*, so what depends on it is cannot-assess — and the deviation is
counted; the request is never refused for it.
"""

from __future__ import annotations

import math
import re
from typing import Any

from cds_engine.service.deviations import note_deviation
from cds_engine.service.errors import HookError

__all__ = ["MAX_YEAR", "MIN_YEAR", "first_bad_text", "require_clean_context", "scrub_resources"]

MIN_YEAR = 1900
MAX_YEAR = 2200
# FHIR date / dateTime / instant with at least a month: a year alone ("0001") may be a code
_DATE = re.compile(r"^(-?\d{4,})-\d{2}(-\d{2})?(T[0-9:.+\-Z]*)?$")
# elements that hold codes, names or identifiers, never dates (a code may look like "1234-56")
_NOT_DATES = frozenset(
    {"code", "system", "display", "text", "id", "reference", "url", "div", "value", "unit"}
)
# elements whose number is a measured or ordered amount (a negative one is an entry error)
_AMOUNT_KEYS = frozenset({"value"})


def _date_out_of_range(text: str) -> bool:
    match = _DATE.match(text)
    if match is None:
        return False
    year = int(match.group(1))
    return year < MIN_YEAR or year > MAX_YEAR


def _bad_string(text: str) -> str | None:
    if "\x00" in text:
        return "must not contain a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must not contain a lone surrogate (invalid Unicode)"
    return None


def _walk(value: Any, path: str) -> Any:
    """(item, path, parent, key) for every node, iteratively (a deep body must not exhaust the stack)."""
    stack: list[tuple[Any, str, Any, Any]] = [(value, path, None, None)]
    while stack:
        item, where, parent, key = stack.pop()
        yield item, where, parent, key
        if isinstance(item, dict):
            stack.extend(
                (v, f"{where}.{k}" if where else str(k), item, k) for k, v in reversed(list(item.items()))
            )
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]", item, i) for i, v in reversed(list(enumerate(item))))


def first_bad_text(value: Any, path: str) -> tuple[str, str] | None:
    """(path, why) of the first NUL / lone surrogate / out-of-range date in ``value``, or None."""
    for item, where, parent, key in _walk(value, path):
        if isinstance(parent, dict) and isinstance(key, str):
            why = _bad_string(key)
            if why is not None:
                return where, f"a member name {why}"
        if isinstance(item, str):
            why = _bad_string(item)
            if why is not None:
                return where, why
            if key not in _NOT_DATES and _date_out_of_range(item):
                return where, f"a date must lie between {MIN_YEAR} and {MAX_YEAR}"
    return None


def require_clean_context(body: dict[str, Any]) -> None:
    """400 naming the field for a NUL, a lone surrogate or an out-of-range date outside ``prefetch``.

    ``{"facts": ...}`` checks a ``PatientFacts`` body (``/evaluate``): its fields are named bare.
    """
    for name, value in body.items():
        if name == "prefetch":
            continue
        found = first_bad_text(value, "" if name == "facts" else name)
        if found is not None:
            raise HookError(400, found[0], found[1])


def scrub_resources(value: Any, path: str) -> Any:
    """Remove out-of-range dates, non-finite numbers and negative ``value`` amounts (in place).

    Each removal is a counted deviation (path and kind, never the value); returns ``value``.
    """
    doomed: list[tuple[Any, Any, str, str]] = []
    for item, where, parent, key in _walk(value, path):
        if parent is None:
            continue
        kind = None
        if isinstance(item, float) and not math.isfinite(item):
            kind = "number-not-finite"
        elif (
            isinstance(item, int | float)
            and not isinstance(item, bool)
            and key in _AMOUNT_KEYS
            and item < 0
        ):
            kind = "number-negative"
        elif isinstance(item, str) and key not in _NOT_DATES and _date_out_of_range(item):
            kind = "date-out-of-range"
        if kind is not None:
            doomed.append((parent, key, where, kind))
    for parent, key, where, kind in reversed(doomed):  # reversed: list indexes stay valid
        if isinstance(parent, dict):
            parent.pop(key, None)
        elif isinstance(parent, list):
            del parent[key]
        note_deviation(_generic(where), kind)
    return value


def _generic(path: str) -> str:
    """A field path without list positions past the resource (bounded log cardinality, no ids)."""
    return re.sub(r"\[\d+\]", "[]", path)
