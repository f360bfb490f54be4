"""Doses written as a count of tablets or capsules: which strength turns them into mg, if any.

Real clients write "1 tablet": the CDS Hooks Sandbox sends ``doseQuantity {value: 1, code:
"{pill}"}`` with no unit, others ``{tbl}``, ``{tablet}``, ``{capsule}``, "tablet(s)" or ``TAB``.
A count is a dose in mg only through the product's strength per unit, and only when that
strength comes from **one** source:

* the vocabulary's strength of the coded product (RxNorm SCD/SBD, ``strength_mg``), or
* ``Medication.ingredient.strength`` of a single-ingredient Medication (mg per one unit);

when both are stated and disagree, or the Medication lists several ingredients with a strength,
or the product is a liquid ({pill} of an oral solution), the dose stays *not convertible*: the
unit is replaced by a description the engine does not know, so every dose check is reported as
cannot-assess rather than computed from a guess. A count of a liquid is never read as mL.

The conversion itself stays where it always was (:mod:`cds_engine.facts.derive` multiplies
``tablet``/``capsule`` by the vocabulary strength); this module only reconciles the sources and,
when the strength is known from the Medication alone, converts to mg here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cds_engine.facts.normalize import LIQUID_FORMS, MASS_UNITS_TO_MG, normalize_form, normalize_unit
from cds_engine.sources.dosage import Dosage
from cds_engine.sources.fhir_read import as_list, concept_text, quantity
from cds_engine.vocabulary import Product

__all__ = ["COUNT_UNITS", "count_unit", "counted_dosage", "reconcile_count_dose"]

COUNT_UNITS = frozenset({"tablet", "capsule"})
# spellings of one tablet / capsule seen from clients, beyond what normalize_unit knows
_COUNT_SPELLINGS = {
    "{pill}": "tablet",
    "{pills}": "tablet",
    "pill": "tablet",
    "pills": "tablet",
    "{tablet}": "tablet",
    "{tablets}": "tablet",
    "{tbl}": "tablet",
    "tbl": "tablet",
    "tablet(s)": "tablet",
    "tab(s)": "tablet",
    "tab": "tablet",
    "tabs": "tablet",
    "{capsule}": "capsule",
    "{capsules}": "capsule",
    "capsule(s)": "capsule",
    "cap": "capsule",
    "caps": "capsule",
    "cap(s)": "capsule",
}
_PER_UNIT = frozenset({"", "1", "{unit}", *_COUNT_SPELLINGS, *COUNT_UNITS, "tablets", "capsules"})


def count_unit(unit: str | None) -> str | None:
    """``tablet`` or ``capsule`` when ``unit`` is a count of them (any known spelling), else None."""
    if unit is None:
        return None
    key = unit.strip().lower()
    if key in _COUNT_SPELLINGS:
        return _COUNT_SPELLINGS[key]
    normalized = normalize_unit(unit)
    return normalized if normalized in COUNT_UNITS else None


def _medication_strength(medication: dict[str, Any] | None) -> tuple[float | None, bool]:
    """(mg per unit from a single-ingredient Medication, usable): usable False when ambiguous."""
    if not medication:
        return None, True
    strengths: list[float | None] = []
    for ingredient in as_list(medication.get("ingredient")):
        strength = ingredient.get("strength") if isinstance(ingredient, dict) else None
        if not isinstance(strength, dict):
            continue
        top, top_unit, _ = quantity(strength.get("numerator"))
        bottom, bottom_unit, _ = quantity(strength.get("denominator"))
        factor = MASS_UNITS_TO_MG.get(normalize_unit(top_unit) or "")
        per_unit = (bottom_unit or "").strip().lower() in _PER_UNIT and bottom in (None, 1, 1.0)
        strengths.append(round(top * factor, 6) if top is not None and factor and per_unit else None)
    if not strengths:
        return None, True
    if len(strengths) > 1:
        return None, False  # a combination product: a count is not a dose of one ingredient
    return strengths[0], True


def reconcile_count_dose(
    unit: str | None, product: Product | None, medication: dict[str, Any] | None
) -> tuple[str | None, float]:
    """(unit, factor) for the order: amounts are multiplied by ``factor`` and carry ``unit``.

    Unchanged ``(unit, 1.0)`` unless the dose is a count; then ``tablet``/``capsule`` when the
    vocabulary's strength is the one source (derive converts it), ``mg`` with the Medication's
    strength as factor when that is the one source, or a unit the engine does not know (no
    conversion: cannot-assess) when the sources disagree, the product is a liquid, or neither
    states a strength.
    """
    counted = count_unit(unit)
    if counted is None:
        return unit, 1.0
    form = product.form if product is not None and product.form else None
    if form is None and medication:
        form = normalize_form(concept_text(medication.get("form")))
    if form in LIQUID_FORMS:
        return f"{counted} count of a liquid product", 1.0
    from_vocabulary = product.strength_mg if product is not None else None
    from_medication, usable = _medication_strength(medication)
    if not usable:
        return f"{counted} of a product with several strengths", 1.0
    if from_vocabulary and from_medication and abs(from_vocabulary - from_medication) > 1e-6:
        return f"{counted} (strength sources disagree)", 1.0
    if from_vocabulary:
        return counted, 1.0
    if from_medication:
        return "mg", from_medication
    return counted, 1.0  # no strength anywhere: derive cannot convert it, the dose is cannot-assess


def counted_dosage(dosage: Dosage, product: Product | None, medication: dict[str, Any] | None) -> Dosage:
    """``dosage`` with a count dose reconciled (:func:`reconcile_count_dose`); other doses unchanged."""
    unit, factor = reconcile_count_dose(dosage.unit, product, medication)
    if unit == dosage.unit:
        return dosage

    def scaled(value: float | None) -> float | None:
        return None if value is None else round(value * factor, 6)

    phases = [
        replace(
            p,
            unit=unit if p.unit == dosage.unit else p.unit,
            amount=scaled(p.amount) if p.unit == dosage.unit else p.amount,
            schedule=[v * factor for v in p.schedule] if p.schedule and p.unit == dosage.unit else p.schedule,
        )
        for p in dosage.phases
    ]
    return replace(
        dosage,
        unit=unit,
        amount=scaled(dosage.amount),
        schedule=[round(v * factor, 6) for v in dosage.schedule] if dosage.schedule else None,
        phases=phases,
    )
