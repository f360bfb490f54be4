"""The alert detail as the prescriber saw the card: rendered markdown, the order in one sentence,
evidence under the fact catalog's labels and units.

Markdown is rendered by markdown-it-py with raw HTML *disabled* (``<script>`` in a detail stays
text), then passed through nh3's allow-list (only formatting tags, http(s) links with
``rel="noopener noreferrer"``) — two independent layers, because pack text and site overrides are
data. Nothing here knows a drug: names come from the pack vocabulary or the stored order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup

from cds_engine.facts.catalog import lookup
from cds_engine.service.order_label import order_label

if TYPE_CHECKING:
    from cds_engine.vocabulary import Vocabulary

__all__ = ["EvidenceRow", "evidence_rows", "order_json", "order_sentence", "render_markdown"]

MAX_MARKDOWN = 20_000
_TAGS = {"p", "br", "strong", "em", "code", "pre", "ul", "ol", "li", "a", "blockquote", "h3", "h4", "hr"}
_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).disable("image")
_ACTIONS = {"new": "new start", "modify": "dose change"}
_BOUNDS = {"__gt": ">", "__ge": "≥", "__lt": "<", "__le": "≤"}


def render_markdown(text: str | None) -> Markup:
    """Card markdown as safe HTML (raw HTML off, then an allow-list sanitiser)."""
    if not text:
        return Markup("")
    html = _md.render(str(text)[:MAX_MARKDOWN])
    clean = nh3.clean(html, tags=_TAGS, attributes={"a": {"href", "title"}}, url_schemes={"http", "https"},
                      link_rel="noopener noreferrer", strip_comments=True)
    return Markup(clean)  # sanitised just above


@dataclass(frozen=True)
class EvidenceRow:
    label: str
    value: str
    fact: str  # the catalog name, kept for traceability


def _label(description: str, name: str) -> str:
    """The catalog description's head, without asides ("…, for card text (the order included)").

    A description that is a list of values ("new | modify | …") gives no label: the fact name does.
    """
    head = description.split(", for card text")[0].split(" (")[0].split(": ")[0].strip()
    return name.replace("_", " ").capitalize() if "|" in head or not head else head


def _unit(unit: str | None, name: str, evidence: dict[str, Any]) -> str | None:
    """A unit of the form "A (eGFR) or B (CrCl)" narrowed by the ``<name>_measure`` fact when present."""
    measure = evidence.get(f"{name}_measure")
    if unit and " or " in unit and isinstance(measure, str):
        for option in unit.split(" or "):
            if option.endswith(f"({measure})"):
                return option.removesuffix(f"({measure})").strip()
    return unit


def _value(value: Any, unit: str | None) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        text = f"{value:g}"
        return f"{text} {unit}" if unit else text
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def evidence_rows(evidence: dict[str, Any]) -> list[EvidenceRow]:
    """One row per fact; a class count carries the medicines' names (``meds_named.*``) beside it."""
    rows: list[EvidenceRow] = []
    for name in sorted(evidence):
        prefix, _, key = name.partition(".")
        if prefix.endswith("_named") and f"{prefix.removesuffix('_named')}.{key}" in evidence:
            continue  # shown with its count
        base, bound = name, ""
        for suffix, sign in _BOUNDS.items():
            if name.endswith(suffix):
                base, bound = name.removesuffix(suffix), f"{sign} "
        spec, family, family_key = lookup(base)
        value = evidence[name]
        if spec is not None:
            label = _label(spec.description, base)
            text = bound + _value(value, _unit(spec.unit, base, evidence))
        elif family is not None and family_key:
            label = f"{_label(family.description, prefix)}: {family_key.replace('_', ' ')}"
            text = _value(value, None)
            named = evidence.get(f"{prefix}_named.{key}")
            if named:
                text = f"{text} ({named})"
        else:
            label, text = name, _value(value, None)
        rows.append(EvidenceRow(label=label, value=text, fact=name))
    return rows


def _facts_order(order: dict[str, Any], vocab: Vocabulary | None) -> str | None:
    """An order held as facts (``/evaluate``): product, form, route, amount, unit, doses per day."""
    product = order.get("product") if isinstance(order.get("product"), dict) else {}
    name = None
    if vocab is not None and isinstance(product.get("code"), str):
        from cds_engine.facts.model import Coding

        known = vocab.product(Coding(system=product.get("system"), code=product["code"]))
        name = known.display if known is not None else None
    name = name or product.get("display") or "medication not named"
    amount, unit, per_day = order.get("dose_amount"), order.get("dose_unit"), order.get("doses_per_day")
    parts = []
    if isinstance(amount, int | float) and not isinstance(amount, bool):
        parts.append(f"{amount:g} {unit or ''}".strip())
    if isinstance(order.get("route"), str):
        parts.append(order["route"])
    if isinstance(per_day, int | float) and not isinstance(per_day, bool):
        parts.append(f"{per_day:g} times per day")
    return f"{name} — {' '.join(parts) if parts else 'no dose stated'}"


_PER_DAY = {"d": 1.0, "h": 24.0, "min": 1440.0, "wk": 1 / 7}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _fhir_daily_mg(order: dict[str, Any]) -> float | None:
    """Daily mg of a MedicationRequest's first dosage, only when plainly in mg per day/hour/week."""
    dosages = order.get("dosageInstruction")
    first = dosages[0] if isinstance(dosages, list) and dosages and isinstance(dosages[0], dict) else {}
    rates = first.get("doseAndRate")
    rate = rates[0] if isinstance(rates, list) and rates and isinstance(rates[0], dict) else {}
    quantity = rate.get("doseQuantity") if isinstance(rate.get("doseQuantity"), dict) else {}
    timing = first.get("timing") if isinstance(first.get("timing"), dict) else {}
    repeat = timing.get("repeat") if isinstance(timing.get("repeat"), dict) else {}
    amount, frequency, period = (_number(quantity.get("value")), _number(repeat.get("frequency")),
                                 _number(repeat.get("period")))
    factor = _PER_DAY.get(repeat.get("periodUnit")) if isinstance(repeat.get("periodUnit"), str) else None
    unit = quantity.get("code") or quantity.get("unit")
    if unit != "mg" or None in (amount, frequency, period, factor) or not period:
        return None
    return amount * frequency * factor / period  # type: ignore[operator]


def order_sentence(order: dict[str, Any] | None, evidence: dict[str, Any],
                   vocab: Vocabulary | None = None) -> str | None:
    """"<medication> — <dose>, <frequency> (<N> mg/day), <new start|change|…>" from structured fields."""
    if not isinstance(order, dict):
        return None
    if order.get("resourceType") == "MedicationRequest":
        sentence = order_label(order, vocab).replace("\\", "")  # plain text: the page escapes it
    elif "product" in order or "dose_amount" in order:
        sentence = _facts_order(order, vocab)
    else:
        return None
    daily = _number(evidence.get("daily_dose_mg"))  # the engine's own figure first
    if daily is None and order.get("resourceType") == "MedicationRequest":
        daily = _fhir_daily_mg(order)
    elif daily is None and order.get("dose_unit") == "mg":
        amount, per_day = _number(order.get("dose_amount")), _number(order.get("doses_per_day"))
        daily = amount * per_day if amount is not None and per_day is not None else None
    if daily is not None:
        sentence = f"{sentence} ({daily:g} mg/day)"
    action = order.get("action") or evidence.get("order_action")
    if isinstance(action, str) and action:
        sentence = f"{sentence}, {_ACTIONS.get(action, action.replace('_', ' '))}"
    return sentence


def order_json(order: dict[str, Any] | None) -> str | None:
    return json.dumps(order, indent=2, sort_keys=True, default=str) if order is not None else None
