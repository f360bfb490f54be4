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
    """(path, why) of the first NUL / lone surrogate / out-of-range date in ``value``, or None.

    A clean value (nearly every request) is proved clean by :func:`_any_bad_text`, a tight loop
    that builds no locations; only a value holding something to report is walked in order.
    """
    if not _any_bad_text(value):
        return None
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


def _bad_text_item(text: str, key: Any) -> bool:
    """What :func:`first_bad_text` reports for a string under ``key``: NUL, lone surrogate, date."""
    if "\x00" in text:
        return True
    if text.isascii():  # no surrogate; _DATE can then only match from a minus sign or an ASCII digit
        return key not in _NOT_DATES and text[:1] in _DATE_START and _date_out_of_range(text)
    return _bad_string(text) is not None or (key not in _NOT_DATES and _date_out_of_range(text))


def _any_bad_text(value: Any) -> bool:
    """Whether :func:`first_bad_text` finds anything in ``value`` (same tests, any order).

    The same nodes as :func:`_walk` (dicts and lists are entered; every dict key that is a string
    and every string are tested), without a generator or a location per node — the context check
    ran on every hook call (issue 19 profile)."""
    if isinstance(value, str):
        return _bad_text_item(value, None)
    stack: list[Any] = [value] if isinstance(value, dict | list) else []
    pop, push = stack.pop, stack.append
    while stack:
        node = pop()
        if isinstance(node, dict):
            for key, item in node.items():
                if isinstance(key, str) and ("\x00" in key or (not key.isascii() and _bad_string(key))):
                    return True
                if isinstance(item, str):
                    if _bad_text_item(item, key):
                        return True
                elif isinstance(item, dict | list) and item:
                    push(item)
        else:
            for index, item in enumerate(node):
                if isinstance(item, str):
                    if _bad_text_item(item, index):
                        return True
                elif isinstance(item, dict | list) and item:
                    push(item)
    return False


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
# The same text with every digit made "0" (same length, same positions): the end of every
# ``_RAW_DATE`` match — a year's last four digits, the month and what follows it — is then one
# literal, which the regex engine finds by a fast scan instead of trying ``_RAW_DATE`` at each of
# the thousands of quotes in a body (issue 19: that was most of this check's cost).
_ALL_DIGITS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_RAW_DATE_END = re.compile(rb'0000-00["\-T\\]')
_QUOTE, _MINUS, _ZERO = ord('"'), ord("-"), ord("0")
# Where a scan of :func:`_flagged_by_scans` could match, found in one pass at each minus sign (the
# only literal every candidate holds, and much rarer than the quotes the scans would start from):
# * a date candidate's minus sign after its year: two digits and ``["\-T\\]`` follow, four digits
#   precede it, and before them a quote, a minus sign or a fifth digit — unless it is a quote and
#   the year lies in 1900-2200 (19xx, 20xx, 21xx, 2200), the only case the scans let pass;
# * a minus sign after ``"value"\s*:\s*``: a ``:`` or a space before it, and then the exact text
#   for up to one space before the colon and two after it, or else three spaces before the minus
#   sign, or two before the colon (cases never written by JSON encoders: there it only matches
#   more often than the scan, never less).
_X = rb'["\-T\\]'
_SUSPECT = re.compile(
    rb"-(?<=[0-9:\s]-)(?:[0-9][0-9]" + _X  # (both branches need a digit, a colon or a space before)
    + rb'(?<=["\-0-9][0-9]{4}-[0-9][0-9]' + _X + rb")"
    + rb'(?<!"(?:19|20|21)[0-9]{2}-[0-9][0-9]' + _X + rb")"
    + rb'(?<!"2200-[0-9][0-9]' + _X + rb")"
    + rb"|(?<=[:\s]-)(?:(?<=\s\s\s-)|(?<=\s\s:-)|(?<=\s\s:\s-)|(?<=\s\s:\s\s-)"
    + rb'|(?<="value":-)|(?<="value":\s-)|(?<="value":\s\s-)'
    + rb'|(?<="value"\s:-)|(?<="value"\s:\s-)|(?<="value"\s:\s\s-)))'
)

_GOOD_CENTURIES = frozenset((b"19", b"20", b"21"))
_FEW_BACKSLASHES = 64  # checked one by one; past them, one scan for a "\u" beats a step each


def scrub_may_change(raw: bytes) -> bool:
    """False only when :func:`scrub_resources` cannot remove anything from what ``raw`` parses to.

    ``raw`` must be a body msgspec parsed (:mod:`cds_engine.service.json_body`): it then holds no
    non-finite number (msgspec refuses NaN, Infinity and overflowing numbers) and is valid UTF-8.
    The walk over every node of every prefetched resource was a tenth of a hook call's CPU (issue
    19 profile); a few C-speed scans of the text show that nothing else could be removed: no string
    begins with a year outside 1900-2200 and no ``value`` member is negative. Those scans read ASCII
    digits, quotes and minus signs, so the body walks when its text could hold anything else that
    ``_DATE`` or a member name would read: a digit of another script (``_DATE``'s \\d matches
    them), as UTF-8 or as a ``\\u`` escape, or a ``\\u`` escape that spells an ASCII character (a
    digit, a minus sign, a letter of ``value``) or half of a surrogate pair. Other non-ASCII text (a
    patient's accented name, a zero-width space) cannot change what the scans see.

    The dates are found through :data:`_RAW_DATE_END` on the digits-as-zero copy, each candidate
    then read back in ``raw`` — a few dozen per body rather than a match attempt per quote. On an
    ASCII text without ``\\u`` escapes the answer is :func:`_scrub_may_change_by_pattern`'s (the
    tests compare them on JSON texts).

    Those scans cost a copy of the body and a pass per candidate; most bodies hold nothing they
    could flag, which one pass of :data:`_SUSPECT` shows first (issue 19: 1.77 M → ~0.9 M
    instructions on the load body). It matches wherever either scan could: it is a superset, so
    the answer is the scans' own whenever it matches, and False only where they would say False.
    """
    if not raw.isascii() and _other_script_digits(raw):
        return True
    if _unicode_escape_may_matter(raw):
        return True
    if _SUSPECT.search(raw) is None:  # nothing the scans below could flag (a superset of them)
        return False
    return _flagged_by_scans(raw)


def _flagged_by_scans(raw: bytes) -> bool:
    """The negative-``value`` and date scans of :func:`scrub_may_change` (see there)."""
    if b'"value"' in raw and _RAW_NEGATIVE_VALUE.search(raw) is not None:
        return True
    shape = raw.translate(_ALL_DIGITS_ZERO)
    for found in _RAW_DATE_END.finditer(shape):
        end = found.start()  # the year's last four digits are raw[end:end + 4]
        if end > 0 and shape[end - 1] == _QUOTE:  # the common case: a quote, then four digits
            year = raw[end : end + 4]
            if year[:2] not in _GOOD_CENTURIES and year != b"2200":
                return True
            continue
        start = end  # the digit run (the year) may be longer, and may follow a minus sign
        while start > 0 and shape[start - 1] == _ZERO:
            start -= 1
        if start > 0 and shape[start - 1] == _MINUS:
            start -= 1
        if start > 0 and shape[start - 1] == _QUOTE and _year_out_of_range(raw[start : end + 4]):
            return True  # (no quote before the run: not a date's start, as _RAW_DATE requires)
    return False


_NON_ASCII_RUN = re.compile(rb"[\x80-\xff]+")
_FEW_RUNS = 256  # non-ASCII runs read one by one; a body with more walks (text in another script)


def _other_script_digits(raw: bytes) -> bool:
    """Whether the non-ASCII text of ``raw`` may hold a decimal digit (True when unsure).

    Every run of bytes >= 0x80 is whole UTF-8 characters (ASCII bytes are never part of one)."""
    runs = _NON_ASCII_RUN.findall(raw)
    if len(runs) > _FEW_RUNS:
        return True
    try:
        return any(any(c.isdecimal() for c in run.decode("utf-8")) for run in runs)
    except UnicodeDecodeError:
        return True


def _unicode_escape_may_matter(raw: bytes) -> bool:
    """Whether a ``\\u`` escape in ``raw`` may spell what the scans read (see scrub_may_change).

    Every backslash followed by ``u`` is read as an escape (an escaped backslash before a ``u``
    too: more cautious, never less); one that spells ASCII, a surrogate or a decimal digit, or
    that does not parse, matters. Past :data:`_FEW_BACKSLASHES` backslashes, any ``\\u`` does."""
    find = raw.find
    at = find(b"\\")
    for _ in range(_FEW_BACKSLASHES):
        if at < 0:
            return False
        if raw[at + 1 : at + 2] == b"u":
            digits = raw[at + 2 : at + 6]
            if len(digits) < 4 or not all(c in _HEX for c in digits):
                return True
            point = int(digits, 16)
            if point < 0x80 or 0xD800 <= point <= 0xDFFF or chr(point).isdecimal():
                return True
        at = find(b"\\", at + 1)
    return at >= 0 and find(b"\\u", at) >= 0


_HEX = frozenset(b"0123456789abcdefABCDEF")


def _scrub_may_change_by_pattern(raw: bytes) -> bool:
    """:func:`scrub_may_change` as first written: one ``_RAW_DATE`` scan (the reference it must equal)."""
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
