"""Which order a card is about: the draft's medication and dose, as the first line of the detail.

With several drafts in one request (or a clinician switching between them) a card that does not
name its order is ambiguous. Every order-specific card's detail therefore starts with
``**Order:** <medication> — <dose>`` (``**Orders:**`` with each order when the same advice holds
for several drafts and is shown once). The medication is named by the vocabulary's display of its
code; the dose is built from the structured amount, unit and timing — free text from the request
(``dosageInstruction.text``, notes) is never put into a card. Only when the product is not in the
vocabulary is the request's name used, shortened and markdown-escaped (shown, never rendered).
"""

from __future__ import annotations

import re
from typing import Any

from cds_engine.facts.model import Coding
from cds_engine.service.coverage import UNAVAILABLE_RULE
from cds_engine.service.models import Card
from cds_engine.sources.dose_counts import count_unit
from cds_engine.vocabulary import Vocabulary

__all__ = ["PATIENT_LEVEL_RULES", "name_orders", "named_detail", "order_label"]

# cards about the record rather than one order (no order named on them)
PATIENT_LEVEL_RULES = frozenset({UNAVAILABLE_RULE})
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!<>|~])")
_PERIOD_WORDS = {"d": "day", "h": "hour", "wk": "week", "mo": "month", "min": "minute", "a": "year"}


def _escape(text: str, limit: int = 80) -> str:
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return _MARKDOWN.sub(r"\\\1", text)


def _number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return f"{value:g}"


def _known_name(concept: Any, vocab: Vocabulary | None) -> str | None:
    """The vocabulary's display of the first coding it lists (our text, not the request's)."""
    if vocab is None or not isinstance(concept, dict):
        return None
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and isinstance(coding.get("code"), str):
            system = coding.get("system") if isinstance(coding.get("system"), str) else None
            product = vocab.product(Coding(system=system, code=coding["code"]))
            if product is not None:
                return product.display
    return None


def _medication(draft: dict[str, Any], vocab: Vocabulary | None) -> tuple[str, bool]:
    """(name, from the vocabulary)."""
    contained = [
        c.get("code")
        for c in draft.get("contained") or []
        if isinstance(c, dict) and c.get("resourceType") == "Medication"
    ]
    for candidate in [draft.get("medicationCodeableConcept"), *contained]:
        known = _known_name(candidate, vocab)
        if known is not None:
            return known, True
    return _request_name(draft), False


def _request_name(draft: dict[str, Any]) -> str:
    concept = draft.get("medicationCodeableConcept")
    if isinstance(concept, dict):
        if isinstance(concept.get("text"), str) and concept["text"].strip():
            return concept["text"]
        for coding in concept.get("coding") or []:
            if isinstance(coding, dict) and isinstance(coding.get("display"), str):
                return coding["display"]
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                return f"code {coding['code']}"
    reference = draft.get("medicationReference")
    if isinstance(reference, dict):
        if isinstance(reference.get("display"), str):
            return reference["display"]
        for contained in draft.get("contained") or []:
            if isinstance(contained, dict) and contained.get("resourceType") == "Medication":
                code = contained.get("code") if isinstance(contained.get("code"), dict) else {}
                name = code.get("text") or next(
                    (c.get("display") for c in code.get("coding") or [] if isinstance(c, dict)), None
                )
                if isinstance(name, str):
                    return name
    return "medication not named"


def _amount(dosage: dict[str, Any]) -> str | None:
    rates = dosage.get("doseAndRate")
    rates = [rates] if isinstance(rates, dict) else rates if isinstance(rates, list) else []
    for rate in rates:
        quantity = rate.get("doseQuantity") if isinstance(rate, dict) else None
        if not isinstance(quantity, dict):
            continue
        value = _number(quantity.get("value"))
        if value is None:
            return None
        unit = str(quantity.get("unit") or quantity.get("code") or "")[:20]
        counted = count_unit(unit)
        if counted is not None:
            unit = counted if value == "1" else f"{counted}s"
        return f"{value} {unit}".strip()
    return None


def _frequency(dosage: dict[str, Any]) -> str | None:
    timing = dosage.get("timing") if isinstance(dosage.get("timing"), dict) else {}
    repeat = timing.get("repeat") if isinstance(timing.get("repeat"), dict) else {}
    frequency, period = _number(repeat.get("frequency")), _number(repeat.get("period"))
    unit = repeat.get("periodUnit")
    if frequency is not None and period is not None and isinstance(unit, str):
        word = _PERIOD_WORDS.get(unit, unit)
        per = word if period == "1" else f"{period} {word}s"
        return f"{frequency} time{'s' if frequency != '1' else ''} per {per}"
    code = timing.get("code") if isinstance(timing.get("code"), dict) else {}
    text = code.get("text") or next(
        (c.get("code") for c in code.get("coding") or [] if isinstance(c, dict)), None
    )
    return str(text) if text else None


def order_label(draft: dict[str, Any], vocab: Vocabulary | None = None) -> str:
    """``<medication> — <amount unit>, <frequency>`` from structured fields, markdown-escaped."""
    name, known = _medication(draft, vocab)
    name = _escape(name, limit=120 if known else 80)
    dosages = [d for d in draft.get("dosageInstruction") or [] if isinstance(d, dict)]
    if not dosages:
        return f"{name} — no dose stated"
    first = dosages[0]
    parts = [p for p in (_amount(first), _frequency(first)) if p]
    dose = _escape(", ".join(parts)) if parts else "dose not readable"
    return f"{name} — {dose}"


def name_orders(card: Card, labels: list[str]) -> Card:
    """The card with ``**Order:**``/``**Orders:**`` naming ``labels`` as its first detail line."""
    if not labels:
        return card
    return card.model_copy(update={"detail": named_detail(card.detail, labels)})


def named_detail(detail: str | None, labels: list[str]) -> str:
    """A card detail with ``**Order:**``/``**Orders:**`` naming ``labels`` (not empty) as its first line.

    Also used while a card is built (:func:`~cds_engine.service.cards.alert_card`), so a new
    card is not copied to name its order; a line already there is replaced."""
    head = f"**Order:** {labels[0]}" if len(labels) == 1 else "**Orders:** " + "; ".join(labels)
    detail = detail or ""
    if detail.startswith(("**Order:** ", "**Orders:** ")):
        detail = detail.split("\n\n", 1)[1] if "\n\n" in detail else ""
    return f"{head}\n\n{detail}" if detail else head
