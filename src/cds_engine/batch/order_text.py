"""``--assume-order "DRUG 5 mg PO TID"``: a hypothetical order written the way prescribers write it.

Why a parser and not a JSON option: the question pharmacy teams ask is "what would fire if
every patient on this list were started on <drug> 5 mg three times a day?", and they write it
exactly like that. The grammar is deliberately small and generic — nothing here knows a drug:

    <drug words> [<strength/form words>] <amount> <unit> [<route>] [<frequency>] [PRN] [for <indication>]

* drug words are looked up in the pack vocabulary: a product whose display matches (form and
  strength included) gives its code; otherwise the ingredient term gives the ingredient code
  (``ingredients.csv``); otherwise the words are kept as free text, which the vocabulary's
  name fallback still classifies.
* unit: mg, mcg, g, mL, tablet … (anything else is kept as written: the engine then reports
  the dose as not convertible, it never guesses);
* route: PO, oral, IT, intrathecal, IV, IM, SC, SL, PR, NG … (``normalize_route``);
* frequency: QD/OD/daily, BID, TID, QID, QHS, Q4H…Q24H, "N times daily", "x N/day".

The result becomes an :class:`~cds_engine.facts.model.Order` (tables) or a draft FHIR
MedicationRequest (bundles and NDJSON), so each source maps it with its own, shared code.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from typing import Any

from cds_engine.facts.model import Coding, Order
from cds_engine.facts.normalize import (
    FREQUENCY_CODES,
    KNOWN_ROUTES,
    normalize_form,
    normalize_route,
    normalize_unit,
)
from cds_engine.vocabulary import Vocabulary

__all__ = ["AssumedOrder", "OrderTextError", "parse_order_text"]

_RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
_FREQ = FREQUENCY_CODES
_QH = re.compile(r"^Q(\d+)H$")
_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")
_AMOUNT_UNIT = re.compile(r"^(\d+(?:\.\d+)?)([a-zA-Zµμ]+)$")  # "5mg"
_UNITS = {"mg", "mcg", "g", "mL", "tablet", "capsule", "packet"}
_KNOWN_ROUTES = KNOWN_ROUTES


class OrderTextError(ValueError):
    """The text cannot be read as an order (says which part)."""


@dataclass(frozen=True)
class AssumedOrder:
    """A parsed hypothetical order; ``to_order`` and ``to_fhir`` feed the two kinds of source."""

    text: str
    product: Coding
    dose_amount: float
    dose_unit: str
    route: str | None = None
    form: str | None = None
    doses_per_day: float | None = None
    prn: bool = False
    indication_text: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_order(self) -> Order:
        indication = Coding(display=self.indication_text) if self.indication_text else None
        return Order(
            id="assumed-order",
            product=self.product,
            form=self.form,
            route=self.route,
            dose_amount=self.dose_amount,
            dose_unit=self.dose_unit,
            doses_per_day=self.doses_per_day,
            prn=self.prn,
            prn_max_doses_per_day=self.doses_per_day if self.prn else None,
            indication=indication,
            action="new",
        )

    def to_fhir(self) -> dict[str, Any]:
        """A draft MedicationRequest, mapped by :func:`cds_engine.sources.fhir.facts_from_resources`."""
        coding = {
            k: v
            for k, v in (
                ("system", self.product.system),
                ("code", self.product.code),
                ("display", self.product.display),
            )
            if v
        }
        dosage: dict[str, Any] = {
            "text": self.text,
            "doseAndRate": [{"doseQuantity": {"value": self.dose_amount, "unit": self.dose_unit}}],
        }
        if self.route:
            dosage["route"] = {"text": self.route}
        if self.doses_per_day:
            dosage["timing"] = {"repeat": {"frequency": self.doses_per_day, "period": 1, "periodUnit": "d"}}
        if self.prn:
            dosage["asNeededBoolean"] = True
        resource: dict[str, Any] = {
            "resourceType": "MedicationRequest",
            "id": "assumed-order",
            "status": "draft",
            "intent": "order",
            "medicationCodeableConcept": {
                "coding": [coding] if coding.get("code") else [],
                "text": self.product.display,
            },
            "dosageInstruction": [dosage],
        }
        if self.indication_text:
            resource["reasonCode"] = [{"text": self.indication_text}]
        return resource

    def describe(self) -> str:
        code = f"{self.product.code} " if self.product.code else ""
        freq = f" × {self.doses_per_day:g}/day" if self.doses_per_day else ""
        return (
            f"{self.product.display} ({code or 'no code, name only'}) {self.dose_amount:g} {self.dose_unit}"
            f"{' ' + self.route if self.route else ''}{freq}{' PRN' if self.prn else ''}"
        )


def _frequency(tokens: list[str], i: int) -> tuple[float | None, int]:
    """Administrations per day starting at tokens[i], and how many tokens it used."""
    word = tokens[i].upper().rstrip(".")
    if word in _FREQ:
        return _FREQ[word], 1
    m = _QH.match(word)
    if m and int(m.group(1)) > 0:
        return 24.0 / int(m.group(1)), 1
    rest = [t.lower() for t in tokens[i : i + 3]]
    if (
        _NUMBER.match(rest[0])
        and len(rest) >= 2
        and rest[1] in ("times", "x")
        and len(rest) >= 3
        and rest[2] in ("daily", "a-day", "/day", "per-day", "day")
    ):
        return float(rest[0]), 3
    if rest[0] in ("x", "×") and len(rest) >= 2:
        m2 = re.match(r"^(\d+)(?:/d(?:ay)?)?$", rest[1])
        if m2:
            return float(m2.group(1)), 2
    m3 = re.match(r"^(\d+)x(?:/d(?:ay)?|daily)?$", rest[0])
    if m3:
        return float(m3.group(1)), 1
    return None, 0


def _ingredient_codes(vocab: Vocabulary) -> dict[str, tuple[str, str]]:
    """term (lower case) -> (drug class, RxNorm ingredient code) from ingredients.csv, when listed."""
    out: dict[str, tuple[str, str]] = {}
    for path in vocab.files:
        if path.name != "ingredients.csv":
            continue
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("kind") == "drug_class" and (row.get("rxnorm_ingredient") or "").strip():
                    out.setdefault(
                        row["term"].strip().lower(), (row["group"], row["rxnorm_ingredient"].strip())
                    )
    return out


def _product(
    drug: str, amount: float, unit: str, form: str | None, vocab: Vocabulary
) -> tuple[Coding, list[str]]:
    notes: list[str] = []
    classes = vocab.classify(Coding(display=drug), "drug_class")
    words = set(drug.lower().split())
    # a listed product of that ingredient with this strength and form (e.g. "... 10 mg tablet")
    # (only when unambiguous: without a form, a 10 mg tablet and a 10 mg ODT are different products)
    if unit == "mg":
        candidates = [
            p
            for p in sorted(vocab.products.values(), key=lambda p: p.code)
            if p.ingredient_group in classes
            and p.strength_mg == amount
            and (form is None or p.form == form)
            and words <= set(p.display.lower().replace("/", " ").split())
        ]
        if candidates and len({p.form for p in candidates}) == 1:
            p = candidates[0]
            return Coding(system=p.system, code=p.code, display=p.display), notes
    ingredients = _ingredient_codes(vocab)
    hit = ingredients.get(drug.lower())
    if hit is not None:
        return Coding(system=_RXNORM, code=hit[1], display=drug), notes
    if not classes:  # a misspelling would otherwise screen everyone and report "0 alerts"
        raise OrderTextError(f"'{drug}' is not in the vocabulary: no pack would recognise it (misspelled?)")
    notes.append(f"'{drug}' has no ingredient code in the vocabulary: matched by name")
    return Coding(display=drug), notes


def parse_order_text(text: str, vocab: Vocabulary) -> AssumedOrder:
    """Parse ``text`` (see the module docstring); raise :class:`OrderTextError` naming the problem."""
    tokens = text.replace(",", " ").split()
    if not tokens:
        raise OrderTextError("empty order text")
    # the amount: the first number followed by a unit (or a "5mg" token)
    amount: float | None = None
    unit: str | None = None
    start = end = None
    for i, tok in enumerate(tokens):
        m = _AMOUNT_UNIT.match(tok)
        if m and i > 0:
            amount, unit, start, end = float(m.group(1)), m.group(2), i, i + 1
            break
        if _NUMBER.match(tok) and i > 0 and i + 1 < len(tokens):
            amount, unit, start, end = float(tok), tokens[i + 1], i, i + 2
            break
    if amount is None or unit is None or start is None or end is None:
        raise OrderTextError(
            f"no dose found in {text!r}: write it as '<drug> <amount> <unit> [route] [frequency]'"
        )
    drug_tokens = tokens[:start]
    form = None
    # trailing form words before the amount ("<drug> oral solution 5 mg"): keep them as the form
    while drug_tokens and normalize_form(drug_tokens[-1]) in (
        "tablet",
        "capsule",
        "solution",
        "suspension",
        "granules",
        "injection",
        "patch",
        "odt",
    ):
        form = normalize_form(drug_tokens.pop())
    while drug_tokens and normalize_route(drug_tokens[-1]) in _KNOWN_ROUTES:
        drug_tokens.pop()
    if not drug_tokens:
        raise OrderTextError(f"no drug name before the dose in {text!r}")
    drug = " ".join(drug_tokens)
    norm_unit = normalize_unit(unit) or unit
    route = None
    per_day = None
    prn = False
    indication = None
    rest = tokens[end:]
    i = 0
    unknown: list[str] = []
    while i < len(rest):
        word = rest[i]
        if word.lower() == "for":
            indication = " ".join(rest[i + 1 :]) or None
            break
        if word.upper() in ("PRN", "AS-NEEDED"):
            prn = True
            i += 1
            continue
        freq, used = _frequency(rest, i)
        if used:
            per_day = freq
            i += used
            continue
        if normalize_route(word) in _KNOWN_ROUTES and route is None:
            route = normalize_route(word)
            i += 1
            continue
        if normalize_form(word) in ("tablet", "capsule", "solution", "suspension", "granules", "injection"):
            form = normalize_form(word)
            i += 1
            continue
        unknown.append(word)
        i += 1
    if unknown:
        raise OrderTextError(
            f"cannot read {' '.join(unknown)!r} in {text!r} (route, frequency, PRN or 'for …')"
        )
    product, notes = _product(drug, amount, norm_unit, form, vocab)
    if norm_unit not in _UNITS:
        notes.append(f"unit {unit!r} is not a unit the engine converts: dose checks will report it")
    return AssumedOrder(
        text=text,
        product=product,
        dose_amount=amount,
        dose_unit=norm_unit,
        route=route,
        form=form,
        doses_per_day=per_day,
        prn=prn,
        indication_text=indication,
        notes=tuple(notes),
    )
