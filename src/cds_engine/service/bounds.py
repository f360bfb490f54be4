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

__all__ = [
    "MAX_YEAR", "MIN_YEAR", "first_bad_text", "require_clean_context", "scrub_may_change", "scrub_resources",
]

MIN_YEAR = 1900
MAX_YEAR = 2200
# FHIR date / dateTime / instant with at least a month: a year alone ("0001") may be a code
_DATE = re.compile(r"^(-?\d{4,})-\d{2}(-\d{2})?(T[0-9:.+\-Z]*)?$")
_DATE_START = frozenset("-0123456789")
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


# Where a node is: the root path, or (where its parent is, its key, whether the parent is a list).
# Rendered as text only for the rare node that is reported — building a path string for every node
# of every prefetched resource was most of this module's cost per hook call (issue 19 profile).
_Where = Any


def _walk(value: Any, path: str) -> Any:
    """(item, where, parent, key) for every node, iteratively (a deep body must not exhaust the stack).

    ``where`` is a lazy location: :func:`_path` turns it into ``prefetch.x.entry[0].resource.y``."""
    stack: list[tuple[Any, _Where, Any, Any]] = [(value, path, None, None)]
    pop, extend = stack.pop, stack.extend
    while stack:
        item, where, parent, key = pop()
        yield item, where, parent, key
        if isinstance(item, dict):
            if item:
                extend([(v, (where, k, False), item, k) for k, v in item.items()][::-1])
        elif isinstance(item, list) and item:
            extend([(v, (where, i, True), item, i) for i, v in enumerate(item)][::-1])


def _path(where: _Where) -> str:
    """The text of a lazy location (as the eager paths were: ``a.b[0].c``; a bare first key)."""
    steps = []
    while isinstance(where, tuple):
        where, key, in_list = where
        steps.append((key, in_list))
    text = str(where)
    for key, in_list in reversed(steps):
        text = f"{text}[{key}]" if in_list else (f"{text}.{key}" if text else str(key))
    return text


def first_bad_text(value: Any, path: str) -> tuple[str, str] | None:
    """(path, why) of the first NUL / lone surrogate / out-of-range date in ``value``, or None."""
    for item, where, parent, key in _walk(value, path):
        if isinstance(parent, dict) and isinstance(key, str):
            why = _bad_string(key)
            if why is not None:
                return _path(where), f"a member name {why}"
        if isinstance(item, str):
            why = _bad_string(item)
            if why is not None:
                return _path(where), why
            if key not in _NOT_DATES and _date_out_of_range(item):
                return _path(where), f"a date must lie between {MIN_YEAR} and {MAX_YEAR}"
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

    Each removal is a counted deviation (path and kind, never the value); returns ``value``. It
    visits every node of every prefetched resource on each hook call, so it is one tight loop over
    containers (no generator, no path text unless something is removed). The exact JSON types
    (``str``, ``dict``, ``list``, ``bool``, ``int``) are told apart by ``type(...) is`` first —
    a third cheaper than an ``isinstance`` chain per node (issue 19 profile); anything else (a
    float, a subclass) takes the general checks.
    """
    doomed: list[tuple[Any, Any, _Where, str]] = []
    stack: list[tuple[Any, _Where]] = [(value, path)] if isinstance(value, dict | list) else []
    pop, push, flag = stack.pop, stack.append, doomed.append
    match = _DATE.match
    while stack:
        node, where = pop()
        in_list = isinstance(node, list)
        for key, item in (enumerate(node) if in_list else node.items()):
            kind = None
            cls = type(item)
            if cls is str:
                # a date starts with a digit or a minus sign: skip the pattern for everything else
                if item and item[0] in _DATE_START and key not in _NOT_DATES:
                    found = match(item)
                    if found is not None and not MIN_YEAR <= int(found.group(1)) <= MAX_YEAR:
                        kind = "date-out-of-range"
            elif cls is dict or cls is list:
                if item:
                    push((item, (where, key, in_list)))
            elif cls is bool or (cls is int and (item >= 0 or key not in _AMOUNT_KEYS)):
                pass
            elif isinstance(item, str):
                if item[:1] in _DATE_START and key not in _NOT_DATES and _date_out_of_range(item):
                    kind = "date-out-of-range"
            elif isinstance(item, dict | list):
                if item:
                    push((item, (where, key, in_list)))
            elif isinstance(item, bool):
                pass
            elif isinstance(item, float) and not math.isfinite(item):
                kind = "number-not-finite"
            elif isinstance(item, int | float) and key in _AMOUNT_KEYS and item < 0:
                kind = "number-negative"
            if kind is not None:
                flag((node, key, (where, key, in_list), kind))
    for parent, key, where, kind in reversed(doomed):  # reversed: list indexes stay valid
        if isinstance(parent, dict):
            parent.pop(key, None)
        elif isinstance(parent, list):
            del parent[key]
        note_deviation(_generic(_path(where)), kind)
    return value


# In an ASCII JSON text: a string that starts like a date (``_DATE``: year, two-digit month, then
# the day, the time or the end; its year is checked), and a negative ``value`` member.
_RAW_DATE = re.compile(rb'"(-?[0-9]{4,})-[0-9][0-9]["\-T\\]')
_RAW_NEGATIVE_VALUE = re.compile(rb'"value"\s*:\s*-')


def scrub_may_change(raw: bytes) -> bool:
    """False only when :func:`scrub_resources` cannot remove anything from what ``raw`` parses to.

    ``raw`` must be a body msgspec parsed (:mod:`cds_engine.service.json_body`): it then holds no
    non-finite number (msgspec refuses NaN, Infinity and overflowing numbers). The walk over every
    node of every prefetched resource was a tenth of a hook call's CPU (issue 19 profile); an
    ASCII body without ``\\u`` escapes shows in a few C-speed scans that nothing else could be
    removed: no string begins with a year outside 1900-2200 and no ``value`` member is negative.
    Anything else walks: a non-ASCII byte (``_DATE``'s \\d also matches other scripts' digits) or
    an escape (it may spell a digit or a minus sign).
    """
    if not raw.isascii() or b"\\u" in raw:
        return True
    if b'"value"' in raw and _RAW_NEGATIVE_VALUE.search(raw) is not None:
        return True
    return any(_year_out_of_range(year) for year in _RAW_DATE.findall(raw))


def _year_out_of_range(year: bytes) -> bool:
    """Outside 1900-2200 (a very long digit run counts as outside, never parsed as an int)."""
    return len(year) > 6 or not MIN_YEAR <= int(year) <= MAX_YEAR


def _generic(path: str) -> str:
    """A field path without list positions past the resource (bounded log cardinality, no ids)."""
    return re.sub(r"\[\d+\]", "[]", path)
