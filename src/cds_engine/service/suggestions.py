"""Dose suggestions a clinician can accept with one click: delete the draft, create a corrected one.

Only where the rule names a concrete daily dose (``reduce-dose`` with ``dose_mg_per_day``), and
only as a dose that can actually be dispensed: whole units of a marketed strength of the same
ingredient, form and route (from ``rules/vocabulary/products.csv``; a ``marketed`` column, when
the file has one, excludes products marked no/false), at the ordered number of administrations
per day, not above the rule's dose and below the ordered one. The ordered product is preferred;
another strength is proposed only when the ordered one cannot make such a dose. Otherwise no
suggestion — the card's text still says what to do.

Never a plain stop: a suggestion always deletes *and* re-creates the order, and taper or
cancel advice stays in the text (stopping some drugs abruptly is itself the hazard).
"""

from __future__ import annotations

import copy
import csv
import math
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cds_engine.alerts import Alert, AlertSuggestion
from cds_engine.facts.model import Order
from cds_engine.facts.normalize import normalize_form, normalize_route, normalize_unit
from cds_engine.messages import fmt_value
from cds_engine.service.models import Action, Suggestion
from cds_engine.vocabulary import Product, Vocabulary

__all__ = ["DosePlan", "dose_suggestions", "plan_dose"]

_UCUM = "http://unitsofmeasure.org"
_MAX_UNITS_PER_DOSE = 4
_COUNTED = {"tablet": "{tbl}", "capsule": "{cap}", "packet": "{packet}"}
_TIMES = {1.0: "once daily", 2.0: "twice daily", 3.0: "three times daily", 4.0: "four times daily"}


@dataclass(frozen=True, slots=True)
class DosePlan:
    product: Product
    units_per_dose: int
    dose_mg: float
    doses_per_day: float
    daily_mg: float

    def text(self, unit: str) -> str:
        how = _TIMES.get(self.doses_per_day, f"{fmt_value(self.doses_per_day)} times daily")
        if unit in _COUNTED:
            count = f"{self.units_per_dose} {unit}{'s' if self.units_per_dose > 1 else ''}"
            strength = fmt_value(self.product.strength_mg)
            return f"{count} of {strength} mg {how} ({fmt_value(self.daily_mg)} mg/day)"
        return f"{fmt_value(self.dose_mg)} mg {how} ({fmt_value(self.daily_mg)} mg/day)"


@lru_cache(maxsize=16)
def _unmarketed(path: Path, mtime: float) -> frozenset[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if "marketed" not in (reader.fieldnames or []):
            return frozenset()
        return frozenset(
            row["code"].strip()
            for row in reader
            if (row.get("marketed") or "").strip().lower() in ("no", "false", "0", "n")
        )


def _marketed(vocab: Vocabulary, product: Product) -> bool:
    for path in vocab.files:
        if path.name == "products.csv" and path.exists():
            return product.code not in _unmarketed(path, path.stat().st_mtime)
    return True


def _candidates(ordered: Product, vocab: Vocabulary) -> list[Product]:
    same = [
        p
        for p in vocab.products.values()
        if p.ingredient_group == ordered.ingredient_group
        and p.form == ordered.form
        and p.route == ordered.route
        and p.strength_mg
        and _marketed(vocab, p)
    ]
    # the ordered product first, then generic names (RxNorm brand names carry [Brand]), then by strength
    return sorted(same, key=lambda p: (p.code != ordered.code, "[" in p.display, -(p.strength_mg or 0)))


def plan_dose(
    target_daily_mg: float, order: Order, current_daily_mg: float | None, vocab: Vocabulary
) -> DosePlan | None:
    """The largest dispensable dose ≤ target at the ordered frequency, or None."""
    ordered = vocab.product(order.product)
    per_day = order.doses_per_day
    if ordered is None or not ordered.strength_mg or per_day is None or order.prn or order.schedule:
        return None
    if normalize_unit(order.dose_unit) not in ("mg", *_COUNTED):
        return None
    if normalize_form(order.form) not in (None, ordered.form) or normalize_route(order.route) not in (
        None,
        ordered.route,
    ):
        return None
    best: DosePlan | None = None
    for product in _candidates(ordered, vocab):
        strength = product.strength_mg or 0.0
        units = min(_MAX_UNITS_PER_DOSE, math.floor(target_daily_mg / per_day / strength + 1e-9))
        if units < 1:
            continue
        dose = units * strength
        plan = DosePlan(product, units, dose, per_day, round(dose * per_day, 6))
        if current_daily_mg is not None and plan.daily_mg >= current_daily_mg:
            continue
        if product.code == ordered.code:
            return plan  # the ordered strength can do it: do not switch products
        if best is None or plan.daily_mg > best.daily_mg:
            best = plan
    return best


def _new_request(draft: dict[str, Any], plan: DosePlan, unit: str) -> dict[str, Any]:
    new = copy.deepcopy(draft)
    for key in ("id", "meta", "text", "medicationReference", "priorPrescription"):
        new.pop(key, None)
    new["status"] = "draft"
    new.setdefault("intent", "order")
    new["medicationCodeableConcept"] = {
        "coding": [
            {"system": plan.product.system, "code": plan.product.code, "display": plan.product.display}
        ],
        "text": plan.product.display,
    }
    quantity: dict[str, Any]
    if unit in _COUNTED:
        quantity = {"value": plan.units_per_dose, "unit": unit, "system": _UCUM, "code": _COUNTED[unit]}
    else:
        quantity = {"value": plan.dose_mg, "unit": "mg", "system": _UCUM, "code": "mg"}
    instructions = new.get("dosageInstruction") or [{}]
    first = dict(instructions[0]) if isinstance(instructions[0], dict) else {}
    first["doseAndRate"] = [{"doseQuantity": quantity}]
    first["text"] = plan.text(unit)
    new["dosageInstruction"] = [first]
    return new


def dose_suggestions(
    alert: Alert,
    draft: dict[str, Any] | None,
    order: Order | None,
    current_daily_mg: float | None,
    vocab: Vocabulary,
) -> list[Suggestion]:
    """Delete-and-create suggestions for the alert's concrete dose advice (possibly none)."""
    if draft is None or order is None or not isinstance(draft.get("id"), str):
        return []
    out: list[Suggestion] = []
    for advice in alert.suggestions:
        plan = _plan(advice, order, current_daily_mg, vocab)
        if plan is None:
            continue
        unit = normalize_unit(order.dose_unit) or "mg"
        text = plan.text(unit)
        out.append(
            Suggestion(
                label=f"Change to {text}"[:200],
                uuid=str(uuid.uuid4()),
                isRecommended=True,
                actions=[
                    Action(
                        type="delete",
                        description="Remove the draft order as written",
                        resourceId=f"MedicationRequest/{draft['id']}",
                    ),
                    Action(
                        type="create",
                        description=f"Order {plan.product.display}: {text}",
                        resource=_new_request(draft, plan, unit),
                    ),
                ],
            )
        )
    return out[:1]


def _plan(advice: AlertSuggestion, order: Order, current: float | None, vocab: Vocabulary) -> DosePlan | None:
    if advice.action != "reduce-dose" or advice.dose_mg_per_day is None or advice.dose_mg_per_day <= 0:
        return None
    return plan_dose(advice.dose_mg_per_day, order, current, vocab)
