"""Conditions in words, for the clinical committee's catalog and for verifier messages.

A reviewer should not need to read YAML: ``{fact: daily_dose_mg, gt: {param: max_daily_mg}}``
reads "daily dose (mg/day) > 80 mg/day (max_daily_mg); if unknown: cannot assess". Every
comparison states what a missing value means, because that is a clinical decision too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cds_engine.facts import catalog
from cds_engine.messages import fmt_value
from cds_engine.rules import schema as s
from cds_engine.rules.conditions import Leaf

__all__ = ["MISSING_WORDS", "Phrase", "Words", "fact_label", "leaf_text", "value_text"]

OP_WORDS = {"eq": "=", "ne": "≠", "lt": "<", "lte": "≤", "gt": ">", "gte": "≥",
            "in": "is one of", "not_in": "is none of"}
MISSING_WORDS = {
    "fire": "if unknown: counts as met",
    "skip": "if unknown: counts as not met",
    "cannot-assess": "if unknown: cannot assess (reported as missing data)",
}
_UNIT_TOKENS = {"mg", "mcg", "days", "day", "years", "pct", "kg", "h", "weeks", "ml", "per"}
_ACRONYMS = {"egfr": "eGFR", "crcl": "CrCl", "aki": "AKI", "npo": "NPO", "fn": "function"}
_FAMILY_WORDS = {
    "meds": "active {key} medicines (count)",
    "inpatient_meds": "inpatient {key} orders (count)",
    "cond": "active condition: {key}",
    "cond_history": "past condition: {key}",
    "cond_onset_days": "days since onset of {key}",
    "cond_days": "days since {key} was last dated (onset or recorded)",
    "cond_encounter": "{key} is a diagnosis of this encounter",
    "allergy": "allergy: {key}",
    "order_class": "the order is {key}",
    "days_since": "days since last {key}",
    "drug_active_by_route": "active orders of the drug by route {key} (count)",
}


def fact_label(name: str) -> str:
    """``daily_dose_mg`` -> "daily dose (mg/day)"; ``meds.x_y`` -> "active x y medicines (count)"."""
    spec, family, key = catalog.lookup(name)
    if family is not None and key is not None:
        words = _FAMILY_WORDS.get(family.prefix, family.prefix + ": {key}")
        return words.format(key=key.replace("_", " "))
    if spec is None:
        return name
    tokens = name.split("_")
    while spec.unit and len(tokens) > 1 and tokens[-1] in _UNIT_TOKENS:
        tokens = tokens[:-1]
    label = " ".join(_ACRONYMS.get(t, t) for t in tokens)
    return f"{label} ({spec.unit})" if spec.unit else label


def _is_bool_fact(name: str) -> bool:
    spec, family, _ = catalog.lookup(name)
    return (spec.type if spec else family.type if family else "") == "bool"


def _never_missing(name: str) -> bool:
    spec, family, _ = catalog.lookup(name)
    return bool(spec.always) if spec else family is not None and family.default is not None


def value_text(value: Any, params: Mapping[str, Any] | None = None,
               units: Mapping[str, str | None] | None = None) -> str:
    if isinstance(value, s.ParamRef):
        actual = (params or {}).get(value.param)
        unit = (units or {}).get(value.param)
        shown = value_text(actual) if actual is not None else "undefined"
        return f"{shown}{' ' + unit if unit else ''} ({value.param})"
    if isinstance(value, list | tuple):
        items = [value_text(v, params, units) for v in value]
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]
    return fmt_value(value)


def leaf_text(fact: str, op: str, value: Any, params: Mapping[str, Any] | None = None,
              units: Mapping[str, str | None] | None = None) -> str:
    """The comparison alone, e.g. "eGFR < 30 (renal_band_s_below)"."""
    label = fact_label(fact)
    if op == "exists":
        return f"{label} is {'recorded' if value else 'not recorded'}"
    if _is_bool_fact(fact) and op in ("eq", "ne") and isinstance(value, bool):
        return f"{label}: {'yes' if value == (op == 'eq') else 'no'}"
    return f"{label} {OP_WORDS[op]} {value_text(value, params, units)}"


def compiled_leaf_text(leaf: Leaf) -> str:
    """A compiled leaf in words (parameters already resolved)."""
    return leaf_text(leaf.fact, leaf.op, list(leaf.value) if isinstance(leaf.value, tuple) else leaf.value)


@dataclass
class Phrase:
    """One line of a condition in words; ``children`` are indented under it."""

    text: str
    missing: str = ""
    ref: str | None = None  # a named definition: the catalog links to it
    children: list[Phrase] = field(default_factory=list)


class Words:
    """Renders a pack's condition specs, resolving parameter references to their values."""

    def __init__(self, params: Mapping[str, Any], units: Mapping[str, str | None]) -> None:
        self.params = params
        self.units = units

    def phrase(self, spec: Any) -> Phrase:
        if isinstance(spec, s.AllOf):
            return self._group("all of:", spec.all)
        if isinstance(spec, s.AnyOf):
            return self._group("any of:", spec.any)
        if isinstance(spec, s.NotOf):
            return Phrase("not:", children=[self.phrase(spec.not_)])
        if isinstance(spec, s.AtLeast):
            return self._group(f"at least {spec.at_least} of:", spec.of)
        if isinstance(spec, s.Ref):
            return Phrase(spec.ref.replace("_", " "), ref=spec.ref)
        if isinstance(spec, s.ParamTest):
            op = "eq" if spec.eq is not None else "ne" if spec.ne is not None else "in"
            target = spec.eq if spec.eq is not None else spec.ne if spec.ne is not None else spec.in_
            current = self.params.get(spec.param)
            return Phrase(f"setting {spec.param} {OP_WORDS[op]} {value_text(target)} "
                          f"(currently {value_text(current)})")
        assert isinstance(spec, s.FactTest)
        op = spec.op
        text = leaf_text(spec.fact, op, spec.operand(op), self.params, self.units)
        missing = "" if op == "exists" or _never_missing(spec.fact) else MISSING_WORDS[spec.missing]
        return Phrase(text, missing)

    def _group(self, head: str, items: list[Any]) -> Phrase:
        children = [self.phrase(c) for c in items]
        if len(children) == 1:
            return children[0]
        return Phrase(head, children=children)

    def plain(self, spec: Any) -> str:
        """One-line rendering (for search and plain-text reports)."""
        return _flat(self.phrase(spec))


def _flat(p: Phrase) -> str:
    if not p.children:
        return p.text + (f" [{p.missing}]" if p.missing else "")
    inner = "; ".join(_flat(c) for c in p.children)
    return f"{p.text} ({inner})"
