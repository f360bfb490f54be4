"""Rendering rule message templates with the patient's own values.

Templates use ``{fact_name}`` and ``{param.name}``. A missing value renders as ``unknown``
(never as a blank that reads like zero), or as the text after a bar: ``{egfr|none on file}``.
Numbers are shown rounded to one decimal place so a
summary stays short and a derived 53.333 reads 53.3.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["fmt_value", "render"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)(?:\|([^}]*))?\}")


def fmt_value(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | int):
        return f"{round(float(value), 1):g}"
    if isinstance(value, list | tuple):
        return ", ".join(fmt_value(v) for v in value)
    return str(value)


def render(
    template: str, facts: Mapping[str, Any], params: Mapping[str, Any], extra: Mapping[str, Any]
) -> str:
    def sub(match: re.Match[str]) -> str:
        name, fallback = match.group(1), match.group(2)
        if name.startswith("param."):
            return fmt_value(params.get(name[6:]))
        if name in extra:
            return fmt_value(extra[name])
        if name in facts:
            return fmt_value(facts[name])
        for suffix, sign in (("__gt", ">"), ("__ge", "≥"), ("__lt", "<"), ("__le", "≤")):
            if name + suffix in facts:
                return sign + fmt_value(facts[name + suffix])
        return "unknown" if fallback is None else fallback

    return _PLACEHOLDER.sub(sub, template)
