"""Rendering rule message templates with the patient's own values.

Templates use ``{fact_name}`` and ``{param.name}``. A missing value renders as ``unknown``
(never as a blank that reads like zero), or as the text after a bar: ``{egfr|none on file}``.
An absent medicine class reads "none" only when the medication lists were read completely.
Numbers show one decimal when that is exact, else two decimals cut (not rounded): a derived
53.333 reads 53.33 and an eGFR of 59.99 is never shown as "60" in a "< 60" rule.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from typing import Any

from cds_engine.facts import catalog

__all__ = ["INCOMPLETE_MEDICATIONS", "Parts", "absent_text", "fill", "fmt_value", "render", "with_params"]

INCOMPLETE_MEDICATIONS = "unknown (medication list incomplete)"

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)(?:\|([^}]*))?\}")


def _number(value: float) -> str:
    """One decimal when that is exact; else two decimals cut, never rounded up across a
    threshold (an eGFR of 59.99 reads "59.99", never "60", in a "< 60" rule)."""
    if abs(value - round(value, 1)) < 1e-9:
        return f"{round(value, 1):g}"
    nudge = 1e-9 if value >= 0 else -1e-9
    return f"{math.trunc(value * 100 + nudge) / 100:g}"


def fmt_value(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | int):
        number = float(value)
        # NaN or ±infinity (a record table's empty float, an overflowed derivation) is not a
        # reading anyone took: it reads "unknown", never a crash or a made-up number
        return _number(number) if math.isfinite(number) else "unknown"
    if isinstance(value, list | tuple):
        return ", ".join(fmt_value(v) for v in value)
    return str(value)


def absent_text(name: str, facts: Mapping[str, Any]) -> str | None:
    """What an absent family fact means on a card.

    A class of medicines with no entry is "none" only when every medication list was read
    completely; otherwise nobody knows ("unknown (medication list incomplete)"). A condition or
    allergy group with no entry is "not documented" — not "no".
    """
    _, family, _ = catalog.lookup(name)
    if family is None:
        return None
    if family.prefix in catalog.MEDICATION_FAMILIES:
        return "none" if facts.get("medication_lists_complete") is True else INCOMPLETE_MEDICATIONS
    if family.default is False:
        return "not documented"
    return None


def render(
    template: str,
    facts: Mapping[str, Any],
    params: Mapping[str, Any],
    extra: Mapping[str, Any],
    labels: Mapping[str, str] | None = None,
) -> str:
    """Fill a template; ``labels`` turn coded values (an indication group id) into card words."""
    return fill(_parsed(template), facts, params, extra, labels)


Parts = tuple[tuple[str, str | None, str | None], ...]


def fill(
    parts: Parts,
    facts: Mapping[str, Any],
    params: Mapping[str, Any],
    extra: Mapping[str, Any],
    labels: Mapping[str, str] | None = None,
) -> str:
    """:func:`render` of a template already split into parts (:func:`with_params`)."""
    if len(parts) == 1:
        return parts[0][0]
    out: list[str] = []
    for literal, name, fallback in parts:
        out.append(literal)
        if name is not None:
            out.append(_fill(name, fallback, facts, params, extra, labels))
    return "".join(out)


def with_params(template: str, params: Mapping[str, Any]) -> Parts:
    """A template's parts with its ``{param.*}`` placeholders already filled in.

    A pack's parameters are fixed once it is loaded, so a caller that keeps these per pack
    fills only the patient's values per call (:func:`fill` gives what :func:`render` gives).
    """
    parts: list[tuple[str, str | None, str | None]] = []
    text = ""
    for literal, name, fallback in _parsed(template):
        text += literal
        if name is not None and name.startswith("param."):
            text += fmt_value(params.get(name[6:]))
            continue
        parts.append((text, name, fallback))  # the last part of a parse has no name: always kept
        text = ""
    return tuple(parts)


@functools.lru_cache(maxsize=4096)
def _parsed(template: str) -> Parts:
    """A template as (text before a placeholder, its name, its fallback) parts, the last with no name.

    The same matches :meth:`re.Pattern.sub` makes, found once per template: a hook call renders
    some thirty templates of a few packs, and scanning them again was a third of the rendering
    (issue 19 profile). Pure; bounded.
    """
    parts: list[tuple[str, str | None, str | None]] = []
    start = 0
    for match in _PLACEHOLDER.finditer(template):
        parts.append((template[start : match.start()], match.group(1), match.group(2)))
        start = match.end()
    parts.append((template[start:], None, None))
    return tuple(parts)


def _fill(
    name: str,
    fallback: str | None,
    facts: Mapping[str, Any],
    params: Mapping[str, Any],
    extra: Mapping[str, Any],
    labels: Mapping[str, str] | None,
) -> str:
    """The text of one placeholder."""
    if name.startswith("param."):
        return fmt_value(params.get(name[6:]))
    if name in extra:
        return fmt_value(extra[name])
    if name in facts:
        value = facts[name]
        if labels and isinstance(value, str) and value in labels:
            return labels[value]
        return fmt_value(value)
    for suffix, sign in (("__gt", ">"), ("__ge", "≥"), ("__lt", "<"), ("__le", "≤")):
        if name + suffix in facts:
            return sign + fmt_value(facts[name + suffix])
    absent = absent_text(name, facts)
    if absent is not None:
        return absent
    return "unknown" if fallback is None else fallback
