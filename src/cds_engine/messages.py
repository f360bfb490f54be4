"""Rendering rule message templates with the patient's own values.

Templates use ``{fact_name}`` and ``{param.name}``. A missing value renders as ``unknown``
(never as a blank that reads like zero), or as the text after a bar: ``{egfr|none on file}``.
An absent medicine class reads "none" only when the medication lists were read completely.
Numbers show one decimal when that is exact, else two decimals cut (not rounded): a derived
53.333 reads 53.33 and an eGFR of 59.99 is never shown as "60" in a "< 60" rule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from cds_engine.facts import catalog

__all__ = ["INCOMPLETE_MEDICATIONS", "absent_text", "fmt_value", "render"]

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

    def sub(match: re.Match[str]) -> str:
        name, fallback = match.group(1), match.group(2)
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

    return _PLACEHOLDER.sub(sub, template)
