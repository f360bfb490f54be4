"""From :class:`PatientFacts` to the flat facts rules read — every derived value in one place.

Why one place: the Rete evaluator, the plain-Python oracle and the vectorised batch evaluator
must see identical inputs, and a derived value computed twice drifts. Everything here is
threshold-free arithmetic (daily dose, days since, counts by class); clinical cut-offs live in
the rule pack. Where a value cannot be computed with checked units it is left *missing*
(absent from the dict), never guessed: an oral liquid dosed in mL without a concentration has
no daily dose in mg.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from cds_engine.facts.coded_gestation import weeks_from_conditions
from cds_engine.facts.combined import (
    ORAL_FAMILY,
    combined_facts,
    compare_regimen,
    request_facts,
    same_regimen_kind,
)
from cds_engine.facts.lab_units import unreadable_egfr_facts
from cds_engine.facts.model import Coding, Medication, Order, PatientFacts
from cds_engine.facts.names import class_names
from cds_engine.facts.normalize import (
    KNOWN_ROUTES,
    LIQUID_FORMS,
    MASS_UNITS_TO_MG,
    checked_route,
    display_text,
    form_from_text,
    normalize_form,
    normalize_route,
    normalize_unit,
    route_shown,
)
from cds_engine.facts.renal import RenalWindows, renal_facts
from cds_engine.vocabulary import HISTORY_KIND, Vocabulary

__all__ = ["ACTIVE_ACTIONS", "DrugContext", "derive"]

ACTIVE_ACTIONS = frozenset({"new", "modify", "continue"})
# Medication statuses counted as co-medicines. A draft (another order of the same request, or an
# 'intended' statement) will be taken if signed: it counts for class counts, duplicates and the
# combined dose, but it has not been taken, so it is never exposure (new-start look-back) and never
# the order a modify/continue replaces.
_COUNTED_STATUSES = frozenset({"active", "draft"})
_COUNTED_UNITS = frozenset({"tablet", "capsule", "packet"})
_ACTIVE_CONDITION = frozenset({"active", "recurrence", "relapse"})
_PAST_CONDITION = frozenset({"inactive", "remission", "resolved"})
_NOT_TRUE = frozenset({"refuted", "entered-in-error"})


@dataclass(frozen=True, slots=True)
class DrugContext:
    """What a pack tells the derivation: which drug class is 'the drug', and look-back windows."""

    drug_class: str
    dialysis_procedure_lookback_days: float = 30.0
    dialysis_condition_group: str = "dialysis"
    pregnancy_condition_group: str = "pregnancy"
    lactation_condition_group: str = "lactation"
    renal: RenalWindows = field(default_factory=RenalWindows)
    sum_active_oral_orders: bool = True  # combined_oral_daily_mg adds the other active oral orders


@dataclass(slots=True)
class _ActiveDrug:
    route: str | None
    form: str | None
    concentration: float | None
    classes: set[str]
    inpatient: bool
    daily_dose_mg: float | None
    prn: bool | None = None
    label: str | None = None  # how a card names this order (escaped)
    draft: bool = False  # not yet taken: a co-medicine, never exposure nor the replaced order


def _to_date(value: date | datetime, as_of: datetime) -> date:
    if isinstance(value, datetime):
        if value.tzinfo is not None and as_of.tzinfo is not None:
            value = value.astimezone(as_of.tzinfo)
        return value.date()
    return value


def _days(value: date | datetime | None, as_of: datetime) -> int | None:
    if value is None:
        return None
    return (as_of.date() - _to_date(value, as_of)).days


def _hours(value: datetime | None, as_of: datetime) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=as_of.tzinfo)
    return round((as_of - value).total_seconds() / 3600.0, 4)


def _age(facts: PatientFacts) -> tuple[float | None, float | None]:
    today = facts.as_of.date()
    if facts.birth_date is not None:
        b = facts.birth_date
        years = today.year - b.year - ((today.month, today.day) < (b.month, b.day))
        return float(years), float((today - b).days)
    if facts.age_years is not None:
        # Without a birth date, days are only known well enough to say "not a neonate".
        days = float(int(facts.age_years * 365.25)) if facts.age_years >= 1 else None
        return float(int(facts.age_years)), days
    return None, None


def _latest_entry(latest: dict[str, int | None], group: str, condition: Any, as_of: datetime) -> None:
    """Days since the most recent dated entry of a group; an undated entry leaves it unknown."""
    dates = [d for d in (condition.onset, condition.recorded) if d is not None]
    days = min(_days(d, as_of) for d in dates) if dates else None  # type: ignore[type-var]
    if group not in latest:
        latest[group] = days
    elif days is None or latest[group] is None:
        latest[group] = None
    else:
        latest[group] = min(latest[group], days)  # type: ignore[type-var]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _drug_classes(med: Medication | Order, vocab: Vocabulary) -> set[str]:
    classes = set(getattr(med, "classes", []) or [])
    classes |= vocab.classify(med.product, "drug_class")
    product = vocab.product(med.product)
    if product is not None:
        classes.add(product.ingredient_group)
    return classes


def _dose_mg_per_unit(order: Order, unit: str | None, vocab: Vocabulary) -> tuple[float | None, float | None]:
    """mg per dose unit, and the concentration used (liquids). None when units cannot be reconciled."""
    product = vocab.product(order.product)
    concentration = order.concentration_mg_per_ml or (product.concentration_mg_per_ml if product else None)
    if unit in MASS_UNITS_TO_MG:
        return MASS_UNITS_TO_MG[unit], concentration
    if unit == "mL":
        return concentration, concentration
    if unit in _COUNTED_UNITS and product is not None and product.strength_mg:
        return product.strength_mg, concentration
    return None, concentration


def _order_doses(order: Order, factor: float | None) -> tuple[float | None, float | None]:
    """Daily dose and largest single dose in mg (None when not computable)."""
    if order.action in ("discontinue", "hold") and order.dose_amount is None and not order.schedule:
        return 0.0, 0.0
    if factor is None:
        return None, None
    if order.schedule:
        amounts = list(order.schedule)
        daily = sum(amounts) * factor
        single = max(amounts) * factor
    elif order.dose_amount is None:
        return None, None
    else:
        single = order.dose_amount * factor
        per_day = order.prn_max_doses_per_day if order.prn else order.doses_per_day
        daily = None if per_day is None else order.dose_amount * per_day * factor
    return _round(daily), _round(single)


def derive(facts: PatientFacts, vocab: Vocabulary, ctx: DrugContext) -> dict[str, Any]:
    """Flatten one patient into the facts of :mod:`cds_engine.facts.catalog` (missing = absent)."""
    as_of = facts.as_of
    out: dict[str, Any] = {}

    age_years, age_days = _age(facts)
    out["age_years"] = age_years
    out["age_days"] = age_days
    out["sex"] = facts.sex
    out["weight_kg"] = facts.weight_kg

    renal = facts.renal
    out.update(renal_facts(renal, as_of, ctx.renal))  # eGFR/CrCl choice: facts/renal.py
    out.update(unreadable_egfr_facts(renal))  # newest eGFR unreadable: facts/lab_units.py
    modality = renal.dialysis
    procedure_days = _days(renal.last_dialysis_procedure, as_of)
    recent_procedure = (
        procedure_days is not None and 0 <= procedure_days <= ctx.dialysis_procedure_lookback_days
    )
    out["aki"] = renal.aki

    rep = facts.reproductive
    out["pregnant"] = rep.pregnant
    weeks = rep.gestational_age_weeks
    if weeks is None:  # a pregnancy coded "Z3A.37" states its weeks, as on the FHIR path
        weeks = weeks_from_conditions(facts.conditions, as_of)
        if weeks is not None and out["pregnant"] is None:
            out["pregnant"] = True
    out["gestational_age_weeks"] = weeks
    out["lactating"] = rep.lactating
    out["taper_or_neonatal_plan_documented"] = rep.taper_or_neonatal_plan_documented
    out["maternal_exposure_at_delivery"] = rep.maternal_exposure_at_delivery
    out["alcohol_use_current"] = facts.alcohol_use_current

    # conditions: only active, non-refuted entries count; resolved ones are history
    cond_onset: dict[str, int] = {}
    cond_latest: dict[str, int | None] = {}  # days since the later of onset/recording (None: undated)
    cond_names: list[tuple[Coding | None, set[str]]] = []
    for condition in facts.conditions:
        if condition.verification_status in _NOT_TRUE:
            continue
        groups = set(condition.groups) | vocab.classify(condition.code, "condition_group")
        # "Personal history of peptic ulcer disease" (Z87.11, or such a text) is history whatever the
        # entry's status; which groups route history this way is vocabulary data (issue #16)
        for group in vocab.classify(condition.code, HISTORY_KIND) - groups:
            out[f"cond_history.{group}"] = True
        status = condition.clinical_status or "active"
        for group in groups:
            if status in _ACTIVE_CONDITION:
                out[f"cond.{group}"] = True
                cond_names.append((condition.code, {group}))  # card text only: cond_named.*
                onset = _days(condition.onset, as_of)
                if onset is not None and (group not in cond_onset or onset < cond_onset[group]):
                    cond_onset[group] = onset
                _latest_entry(cond_latest, group, condition, as_of)
                if condition.encounter_diagnosis:
                    out[f"cond_encounter.{group}"] = True
            elif status in _PAST_CONDITION:
                out[f"cond_history.{group}"] = True
    for group, days in cond_onset.items():
        out[f"cond_onset_days.{group}"] = days
    out.update(class_names(cond_names, vocab, "cond_named"))
    for group, latest in cond_latest.items():
        out[f"cond_days.{group}"] = latest
    # an active, coded pregnancy/lactation diagnosis documents the state (an hCG result alone never does)
    if out["pregnant"] is None and out.get(f"cond.{ctx.pregnancy_condition_group}"):
        out["pregnant"] = True
    if out["lactating"] is None and out.get(f"cond.{ctx.lactation_condition_group}"):
        out["lactating"] = True
    dialysis_dependent = renal.dialysis_dependent or out.get(f"cond.{ctx.dialysis_condition_group}", False)
    if modality is not None and modality != "none":
        out["dialysis"], out["dialysis_modality"] = True, modality
    elif dialysis_dependent or recent_procedure:
        out["dialysis"], out["dialysis_modality"] = True, "unspecified"
    else:  # no documented dialysis: ESRD on the problem list alone is not dialysis
        out["dialysis"], out["dialysis_modality"] = False, "none"

    allergy_groups: set[str] = set()
    for allergy in facts.allergies:
        if allergy.verification_status in _NOT_TRUE or allergy.clinical_status not in (None, "active"):
            continue
        groups = set(allergy.groups) | vocab.classify(allergy.substance, "allergy_group")
        allergy_groups |= groups
    for group in allergy_groups:
        out[f"allergy.{group}"] = True

    # medications and the order under review
    order = facts.order
    order_classes = _drug_classes(order, vocab) if order is not None else set()
    focus = order if order is not None and ctx.drug_class in order_classes else None
    active: list[tuple[Medication | Order, _ActiveDrug]] = []
    for med in facts.medications:
        if med.status not in _COUNTED_STATUSES:
            continue
        classes = _drug_classes(med, vocab)
        product = vocab.product(med.product)
        med_form = _form_of(med, product)
        active.append(
            (
                med,
                _ActiveDrug(
                    route=checked_route(
                        normalize_route(med.route), product.route if product else None, med_form
                    ),
                    form=med_form,
                    concentration=med.concentration_mg_per_ml
                    or (product.concentration_mg_per_ml if product else None),
                    classes=classes,
                    inpatient=med.setting == "inpatient",
                    daily_dose_mg=med.daily_dose_mg,
                    prn=med.prn,
                    label=_label(med),
                    draft=med.status == "draft",
                ),
            )
        )

    replaced: _ActiveDrug | None = None
    presumed_replaced: _ActiveDrug | None = None
    additive_to: _ActiveDrug | None = None
    if order is not None:
        order_product = vocab.product(order.product)
        order_form = _form_of(order, order_product)
        order_route = checked_route(
            normalize_route(order.route), order_product.route if order_product else None, order_form
        )
        if order.action != "new":
            target_classes = {ctx.drug_class} if focus is not None else order_classes
            candidates = [
                (i, a)
                for i, (m, a) in enumerate(active)
                if not a.draft
                and (
                    (order.replaces is not None and isinstance(m, Medication) and m.id == order.replaces)
                    or (order.replaces is None and a.classes & target_classes)
                )
            ]
            if order.replaces is None:
                candidates.sort(key=lambda ia: ia[1].route != order_route)
            if candidates:
                index, candidate = candidates[0]
                presumed = order.replaces is None or order.replaces_presumed
                if presumed and not same_regimen_kind(
                    order_form, order_route, order.prn, candidate.form, candidate.route, candidate.prn
                ):
                    additive_to = candidate  # a PRN beside a scheduled order, or another form: both taken
                else:
                    replaced = candidate
                    presumed_replaced = candidate if presumed else None
                    del active[index]
        if order.action in ACTIVE_ACTIONS:
            unit = normalize_unit(order.dose_unit)
            factor, concentration = _dose_mg_per_unit(order, unit, vocab)
            daily, _single = _order_doses(order, factor)
            active.append(
                (
                    order,
                    _ActiveDrug(
                        route=order_route,
                        form=order_form,
                        concentration=concentration,
                        classes=order_classes,
                        inpatient=facts.encounter.inpatient,
                        daily_dose_mg=daily,
                        prn=order.prn,
                    ),
                )
            )

    if facts.encounter.inpatient and any(ctx.drug_class in a.classes and a.inpatient for _, a in active):
        # medication reconciliation: once the drug is ordered in hospital, the home-list entry is that order
        active = [
            (m, a)
            for m, a in active
            if not (isinstance(m, Medication) and m.setting == "home" and ctx.drug_class in a.classes)
        ]
    med_counts: Counter[str] = Counter()
    inpatient_counts: Counter[str] = Counter()
    drug_routes: Counter[str] = Counter()
    liquid_concentrations: set[float] = set()
    for _, a in active:
        for cls in a.classes:
            med_counts[cls] += 1
            if a.inpatient:
                inpatient_counts[cls] += 1
        if ctx.drug_class in a.classes:
            drug_routes[a.route or "unknown"] += 1
            if a.form in LIQUID_FORMS and a.concentration is not None:
                liquid_concentrations.add(a.concentration)
    for cls, n in med_counts.items():
        out[f"meds.{cls}"] = n
    for cls, n in inpatient_counts.items():
        out[f"inpatient_meds.{cls}"] = n
    # card text only (meds_named.*): which medicines make up each class count
    out.update(class_names(((m.product, a.classes) for m, a in active), vocab))
    out["medication_lists_complete"] = facts.medication_lists_complete is True
    for route, n in drug_routes.items():
        out[f"drug_active_by_route.{route}"] = n
    out["drug_active_count"] = sum(drug_routes.values())
    out["drug_liquid_concentrations"] = len(liquid_concentrations)

    history = facts.history
    # exposure: an order taken now (a sibling draft is not taken yet, whatever it will be)
    other_drug_active = any(ctx.drug_class in a.classes for m, a in active if m is not order and not a.draft)
    out["order_present"] = focus is not None
    if focus is not None:  # which product classes the order is (per-product ceilings)
        for cls in order_classes:
            out[f"order_class.{cls}"] = True
    if focus is not None:
        _order_facts(out, focus, vocab, allergy_groups, replaced, facts)
        if focus.action in ACTIVE_ACTIONS:
            oral_others = [
                a
                for m, a in active
                if m is not focus and ctx.drug_class in a.classes and a.route in (*ORAL_FAMILY, None)
            ]
            others = [a.daily_dose_mg for a in oral_others]
            # what the request itself starts: the draft and its sibling drafts (start caps)
            out.update(
                request_facts(
                    out.get("daily_dose_mg"),
                    [a.daily_dose_mg for a in oral_others if a.draft],
                    sum_orders=ctx.sum_active_oral_orders,
                )
            )
            out.update(
                combined_facts(
                    out.get("daily_dose_mg"),
                    others,
                    sum_orders=ctx.sum_active_oral_orders,
                    presumed=(presumed_replaced.label or "the active order", presumed_replaced.daily_dose_mg)
                    if presumed_replaced is not None
                    else None,
                    additive_beside=(additive_to.label or "the active order") if additive_to else None,
                )
            )
            if additive_to is not None:
                compare_regimen(out)
        if other_drug_active or replaced is not None or focus.action != "new":
            out["days_since_last_exposure"] = 0
    elif other_drug_active:
        out["days_since_last_exposure"] = 0
    if "days_since_last_exposure" not in out:
        out["days_since_last_exposure"] = _days(history.last_exposure, as_of)
    fresh_start = focus is not None and focus.action == "new" and out["days_since_last_exposure"] is None
    out["days_on_therapy"] = None if fresh_start else _days(history.therapy_start, as_of)
    out["days_since_dose_change"] = _days(history.last_dose_change, as_of)
    out["stable_dose_days"] = _days(history.stable_dose_since, as_of)
    if history.stable_dose_since is not None:
        assessed = facts.monitoring.get("efficacy_assessment")
        out["efficacy_assessed_since_stable"] = assessed is not None and assessed >= history.stable_dose_since
    out["hours_since_last_dose"] = _hours(history.last_dose_time, as_of)

    for item, when in facts.monitoring.items():
        out[f"days_since.{item}"] = _days(when, as_of)

    out["pump_present"] = facts.pump.present
    out["pump_alarm_active"] = facts.pump.alarm_active
    if facts.pump.next_refill_date is not None:
        out["days_until_refill"] = (facts.pump.next_refill_date - as_of.date()).days
    out["inpatient"] = facts.encounter.inpatient
    out["npo"] = facts.encounter.npo
    out["hours_since_admission"] = _hours(facts.encounter.admission_time, as_of)

    return {k: v for k, v in out.items() if v is not None}


def _effective_action(action: str, daily: float | None, previous: float | None) -> str:
    """The action the dose says: a 'continue' is an unchanged dose, so a changed one is a 'modify'.

    Why: a 'continue' at 0 mg/day (or at any other dose than the one taken) stops or changes the
    therapy; read as written, the withdrawal and titration rules (which look at modify/stop) would
    never see it. The FHIR mapping already calls such a draft 'modify'; this makes the JSON path
    agree. A 0 mg/day 'continue' is a stop in effect even when the previous dose is unknown.
    """
    if action != "continue" or daily is None:
        return action
    if daily == 0 or (previous is not None and abs(daily - previous) >= 1e-9):
        return "modify"
    return action


def _label(med: Medication) -> str | None:
    """An active order as a card names it: product text and daily dose (escaped, shortened)."""
    name = display_text(med.product.display or med.product.code, 60)
    if name is None:
        return None
    return name if med.daily_dose_mg is None else f"{name} ({med.daily_dose_mg:g} mg/day)"


def _form_of(med: Medication | Order, product: Any) -> str | None:
    """Form as written, else the product's form, else the form named in a text-only product."""
    return (
        normalize_form(med.form)
        or (product.form if product is not None else None)
        or (form_from_text(med.product.display) if product is None else None)
    )


def _order_facts(
    out: dict[str, Any],
    order: Order,
    vocab: Vocabulary,
    allergy_groups: set[str],
    replaced: _ActiveDrug | None,
    facts: PatientFacts,
) -> None:
    product = vocab.product(order.product)
    written = normalize_route(order.route)
    if written is not None and written not in KNOWN_ROUTES:
        written = display_text(written)  # free text reaches cards: escaped, shortened
    route = written or (product.route if product else None)
    form = _form_of(order, product)
    unit = normalize_unit(order.dose_unit)
    factor, concentration = _dose_mg_per_unit(order, unit, vocab)
    daily, single = _order_doses(order, factor)

    out["order_action"] = order.action  # (its place in the facts; the dose may change it below)
    out["order_route"] = route
    checked = checked_route(written, product.route if product else None, form)
    out["order_route_checked"] = checked
    out["order_route_stated"] = written is not None
    if written is not None:
        out["order_route_recognised"] = checked == written
        out["order_route_text"] = display_text(order.route)
    out["order_route_shown"] = route_shown(written, checked, out.get("order_route_text"))
    out["order_form"] = form
    out["order_product_route"] = product.route if product else None
    out["order_product_marketed"] = product.marketed if product else None
    out["order_is_liquid"] = None if form is None else form in LIQUID_FORMS
    out["order_dose_unit"] = unit
    out["order_dose_amount"] = order.dose_amount
    out["order_doses_per_day"] = order.doses_per_day
    out["order_prn"] = order.prn
    out["order_concentration_mg_per_ml"] = concentration
    if order.indication_group:
        out["order_indication"] = order.indication_group
    else:
        groups = sorted(vocab.classify(order.indication, "indication"))
        out["order_indication"] = groups[0] if groups else None
    out["order_reason"] = order.reason
    taper = order.taper
    taper_days: float | None = None
    if taper is not None:
        taper_days = taper.duration_days
        if taper_days is None and taper.end_date is not None:
            start = _to_date(order.date, facts.as_of) if order.date is not None else facts.as_of.date()
            taper_days = float((taper.end_date - start).days)
    out["order_has_taper"] = taper is not None and (taper_days is not None or bool(taper.steps))
    out["order_taper_days"] = taper_days
    out["excipient_allergy"] = bool(set(order.excipient_groups) & allergy_groups)

    out["daily_dose_mg"] = daily
    out["daily_dose_mcg"] = _round(daily * 1000.0) if daily is not None else None
    out["max_single_dose_mg"] = single
    history = facts.history
    previous = history.previous_daily_dose_mg
    if previous is None and replaced is not None:
        previous = replaced.daily_dose_mg
    out["previous_daily_dose_mg"] = previous
    action = _effective_action(order.action, daily, previous)
    out["order_action"] = action
    out["previous_max_single_dose_mg"] = history.previous_max_single_dose_mg
    if daily is not None and previous is not None:
        out["daily_dose_change_mg"] = _round(daily - previous)
        if previous > 0:
            out["daily_dose_reduction_pct"] = _round((previous - daily) / previous * 100.0)
    if single is not None and history.previous_max_single_dose_mg is not None:
        out["single_dose_change_mg"] = _round(single - history.previous_max_single_dose_mg)
    if action in ACTIVE_ACTIONS:
        if previous is None and action == "new":
            out["dose_increase"] = False  # a first order is a start, not an increase
        elif daily is not None and previous is not None:
            out["dose_increase"] = daily > previous
    else:
        out["dose_increase"] = False
