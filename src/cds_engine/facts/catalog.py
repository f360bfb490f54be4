"""The flat facts a rule may read: names, types and what each means.

This catalog is the contract between :mod:`cds_engine.facts.derive` (which computes the
values) and rule packs (which read them). The linter checks every fact a rule names against
it, so a typo or a type mismatch in YAML is an error at load time, not a silent no-alert.

Families (``meds.<class>``, ``cond.<group>`` …) take their keys from the pack vocabulary.
Family facts that count or flag members of a list are never *missing*: an empty medication
list means zero opioids. Scalar facts are missing (``None``) whenever the record does not
say; each rule condition then decides what missing means.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "FACTS",
    "FAMILIES",
    "MEDICATION_FAMILIES",
    "FactSpec",
    "FactType",
    "FamilySpec",
    "companions",
    "lookup",
    "root_missing",
]

FactType = Literal["number", "bool", "string"]


@dataclass(frozen=True, slots=True)
class FactSpec:
    name: str
    type: FactType
    description: str
    bounded: bool = False  # may arrive as a bound (eGFR ">60"): kept as name__gt / __ge / __lt / __le
    unit: str | None = None
    always: bool = False  # derive() always sets it: never missing, so rules need no missing branch
    inputs: tuple[
        str, ...
    ] = ()  # facts it is computed from: a missing value is reported as its missing inputs


@dataclass(frozen=True, slots=True)
class FamilySpec:
    prefix: str
    type: FactType
    description: str
    key_kind: str  # vocabulary kind whose groups are valid keys, or "route" / "monitoring"
    default: float | bool | None  # value when the key is absent (None: the fact is then missing)


def _f(
    name: str,
    type_: FactType,
    description: str,
    *,
    bounded: bool = False,
    unit: str | None = None,
    always: bool = False,
    inputs: tuple[str, ...] = (),
) -> FactSpec:
    return FactSpec(name, type_, description, bounded, unit, always, inputs)


FACTS: dict[str, FactSpec] = {
    f.name: f
    for f in [
        # demographics
        _f("age_years", "number", "Age in completed years at as_of", unit="years"),
        _f("age_days", "number", "Age in days at as_of (neonatal rules)", unit="days"),
        _f("sex", "string", "female | male | other | unknown"),
        _f("weight_kg", "number", "Body weight", unit="kg"),
        # renal
        _f("egfr", "number", "Most recent eGFR", bounded=True, unit="mL/min/1.73 m2"),
        _f("egfr_days_old", "number", "Days between the eGFR result and as_of", unit="days"),
        _f("egfr_method", "string", "Equation or LOINC code of the eGFR"),
        _f("crcl", "number", "Creatinine clearance (Cockcroft-Gault)", bounded=True, unit="mL/min"),
        _f("crcl_days_old", "number", "Days between the CrCl result and as_of", unit="days"),
        _f("egfr_age", "string", "How old the eGFR is, as shown on cards ('19 months ago')"),
        _f("crcl_age", "string", "How old the CrCl is, as shown on cards"),
        _f(
            "egfr_unreadable",
            "bool",
            "The newest eGFR has no readable value or a non-renal unit: no eGFR is used (never an older one)",
        ),
        _f("egfr_unreadable_date", "string", "Date of the unreadable newest eGFR (YYYY-MM-DD)"),
        _f("egfr_unreadable_problem", "string", "What is wrong with it, as a card says it"),
        _f(
            "renal_fn",
            "number",
            "The result that bands kidney function: a current eGFR, else a current CrCl, "
            "else the newer of the two (facts/renal.py)",
            bounded=True,
            unit="mL/min/1.73 m2 (eGFR) or mL/min (CrCl)",
        ),
        _f("renal_fn_measure", "string", "eGFR | CrCl: which measure renal_fn is"),
        _f("renal_fn_days_old", "number", "Days between the renal_fn result and as_of", unit="days"),
        _f("renal_fn_age", "string", "How old the renal_fn result is ('19 months ago')"),
        _f("renal_fn_current", "bool", "renal_fn is within the pack's freshness window"),
        _f("renal_fn_text", "string", "Card text: the result used, its age, and the other measure"),
        _f(
            "dialysis",
            "bool",
            "On dialysis: documented modality, dependence, or a procedure within the look-back",
            always=True,
        ),
        _f("dialysis_modality", "string", "HD | PD | CRRT | unspecified | none"),
        _f("aki", "bool", "Acute kidney injury documented"),
        # reproductive
        _f("pregnant", "bool", "Pregnancy documented (never inferred from hCG alone)"),
        _f("gestational_age_weeks", "number", "Gestational age", unit="weeks"),
        _f("lactating", "bool", "Breastfeeding documented"),
        _f(
            "taper_or_neonatal_plan_documented",
            "bool",
            "Plan to taper before delivery or alert the neonatal team",
        ),
        _f(
            "maternal_exposure_at_delivery",
            "bool",
            "Neonate: maternal exposure to the pack's drug through delivery",
        ),
        _f("alcohol_use_current", "bool", "Current alcohol use documented"),
        _f(
            "medication_lists_complete",
            "bool",
            "Every medication list was read completely (cards say 'none' for an absent class only then)",
            always=True,
        ),
        # encounter, device
        _f("inpatient", "bool", "Current encounter is an inpatient stay", always=True),
        _f("hours_since_admission", "number", "Hours since admission", unit="h"),
        _f("npo", "bool", "Nil by mouth"),
        _f("pump_present", "bool", "An implanted drug pump is documented"),
        _f("pump_alarm_active", "bool", "The pump reports an alarm"),
        _f(
            "days_until_refill",
            "number",
            "Days until the pump's next refill (0 or less: due/overdue)",
            unit="days",
        ),
        # the order under review
        _f("order_present", "bool", "An order of the pack's drug is under review", always=True),
        _f("order_action", "string", "new | modify | continue | discontinue | hold"),
        _f(
            "order_route",
            "string",
            "Route of the order (normalised): oral, intrathecal, iv, im, sc, epidural …",
        ),
        _f(
            "order_route_checked",
            "string",
            "Route the checks use: the recognised route; an unrecognised one as oral; none written: "
            "the product's route or the route its form implies",
        ),
        _f("order_route_stated", "bool", "A route is written on the order"),
        _f("order_route_recognised", "bool", "The written route is one the engine recognises"),
        _f("order_route_text", "string", "The route as written (escaped, shortened) for cards"),
        _f("order_route_shown", "string", "The route as a card names it, with any assumption made"),
        _f("order_form", "string", "Dose form (normalised): tablet, capsule, solution, suspension, patch …"),
        _f("order_product_route", "string", "Route the ordered product is labeled for (from the vocabulary)"),
        _f(
            "order_product_marketed",
            "string",
            "yes | no | unverified: the ordered product is marketed (vocabulary products.csv, cited source)",
        ),
        _f("order_is_liquid", "bool", "The ordered form is a liquid"),
        _f("order_dose_unit", "string", "Dose unit (normalised): mg, mcg, g, mL, or as written"),
        _f("order_dose_amount", "number", "Amount per administration, in order_dose_unit"),
        _f("order_doses_per_day", "number", "Scheduled administrations per 24 h"),
        _f("order_prn", "bool", "Order is as needed"),
        _f("order_concentration_mg_per_ml", "number", "Stated concentration of a liquid", unit="mg/mL"),
        _f("order_indication", "string", "Indication group of the order"),
        _f("order_reason", "string", "Coded reason given for stopping or holding"),
        _f("order_has_taper", "bool", "A taper plan is attached to the order"),
        _f("order_taper_days", "number", "Duration of the attached taper plan", unit="days"),
        _f(
            "excipient_allergy", "bool", "An active allergy matches an excipient group of the ordered product"
        ),
        # dose arithmetic (units checked; unknown rather than guessed)
        _f("daily_dose_mg", "number", "Scheduled daily dose plus PRN daily maximum", unit="mg/day"),
        _f(
            "daily_dose_mcg",
            "number",
            "daily_dose_mg in micrograms",
            unit="mcg/day",
            inputs=("daily_dose_mg",),
        ),
        _f(
            "combined_oral_daily_mg",
            "number",
            "The draft's daily dose plus every active oral/enteral order of the drug it does not replace "
            "(facts/combined.py); known parts only as a lower bound when a part is unknown",
            bounded=True,
            unit="mg/day",
            inputs=("daily_dose_mg",),
        ),
        _f("active_oral_orders", "number", "Orders summed in combined_oral_daily_mg, the draft included"),
        _f(
            "order_request_daily_mg",
            "number",
            "The draft's daily dose plus the other draft orders of the drug in the same request "
            "(oral/enteral or route unknown; facts/combined.py): what the request starts if signed, "
            "for start caps. Drafts are never exposure. Known parts only as a lower bound when a part "
            "is unknown; the draft alone when the pack's sum_active_oral_orders is false",
            bounded=True,
            unit="mg/day",
            inputs=("daily_dose_mg",),
        ),
        _f("presumed_replaced_order", "string", "The active order the draft presumably replaces (card text)"),
        _f(
            "total_if_additional_mg",
            "number",
            "combined_oral_daily_mg plus the presumably replaced order: the total if both are taken",
            unit="mg/day",
        ),
        _f("order_additive_to", "string", "The active order the draft is taken beside (PRN or another form)"),
        _f("max_single_dose_mg", "number", "Largest single dose", unit="mg"),
        _f("previous_daily_dose_mg", "number", "Daily dose before this order", unit="mg/day"),
        _f("previous_max_single_dose_mg", "number", "Largest single dose before this order", unit="mg"),
        _f(
            "daily_dose_change_mg",
            "number",
            "daily_dose_mg - previous_daily_dose_mg",
            unit="mg/day",
            inputs=("daily_dose_mg", "previous_daily_dose_mg"),
        ),
        _f(
            "single_dose_change_mg",
            "number",
            "max_single_dose_mg - previous_max_single_dose_mg",
            unit="mg",
            inputs=("max_single_dose_mg", "previous_max_single_dose_mg"),
        ),
        _f(
            "daily_dose_reduction_pct",
            "number",
            "Reduction of the daily dose relative to before",
            unit="%",
            inputs=("daily_dose_mg", "previous_daily_dose_mg"),
        ),
        _f(
            "dose_increase",
            "bool",
            "The order raises the daily dose of ongoing therapy",
            inputs=("daily_dose_mg", "previous_daily_dose_mg"),
        ),
        # therapy history of the pack's drug
        _f("days_on_therapy", "number", "Days since continuous therapy started", unit="days"),
        _f("days_since_dose_change", "number", "Days since the last dose change", unit="days"),
        _f(
            "days_since_last_exposure",
            "number",
            "Days since the drug was last active/administered",
            unit="days",
        ),
        _f("stable_dose_days", "number", "Days on the current stable dose", unit="days"),
        _f(
            "efficacy_assessed_since_stable",
            "bool",
            "An efficacy assessment is dated on/after the stable-dose date",
            inputs=("stable_dose_days",),
        ),
        _f("hours_since_last_dose", "number", "Hours since the last documented administration", unit="h"),
        _f(
            "drug_active_count",
            "number",
            "Active orders of the pack's drug, this order included",
            always=True,
        ),
        _f(
            "drug_liquid_concentrations",
            "number",
            "Distinct liquid concentrations of the pack's drug on file",
            always=True,
        ),
    ]
}

FAMILIES: dict[str, FamilySpec] = {
    f.prefix: f
    for f in [
        FamilySpec(
            "meds", "number", "Active medicines of a drug class (the order included)", "drug_class", 0
        ),
        FamilySpec(
            "meds_named",
            "string",
            "Names of the active medicines of a drug class, for card text (the order included)",
            "drug_class",
            None,
        ),
        FamilySpec("inpatient_meds", "number", "Active inpatient orders of a drug class", "drug_class", 0),
        FamilySpec("cond", "bool", "An active, non-refuted condition of a group", "condition_group", False),
        FamilySpec(
            "cond_named",
            "string",
            "Names of the active conditions of a group as recorded, for card text",
            "condition_group",
            None,
        ),
        FamilySpec(
            "cond_history", "bool", "A resolved/inactive condition of a group", "condition_group", False
        ),
        FamilySpec(
            "cond_onset_days",
            "number",
            "Days since onset of the latest condition of a group",
            "condition_group",
            None,
        ),
        FamilySpec(
            "cond_days",
            "number",
            "Days since the later of onset/recording of the most recent active entry of a group "
            "(missing when an active entry is undated)",
            "condition_group",
            None,
        ),
        FamilySpec(
            "cond_encounter",
            "bool",
            "An active entry of a group is a diagnosis of the current encounter",
            "condition_group",
            False,
        ),
        FamilySpec("allergy", "bool", "An active, non-refuted allergy of a group", "allergy_group", False),
        FamilySpec(
            "order_class",
            "bool",
            "The order under review is of a drug class (its product's vocabulary classes, e.g. a product "
            "class inside the pack's class)",
            "drug_class",
            False,
        ),
        FamilySpec("days_since", "number", "Days since a monitoring item was last done", "monitoring", None),
        FamilySpec("drug_active_by_route", "number", "Active orders of the pack's drug by route", "route", 0),
    ]
}


def root_missing(name: str, present: Mapping[str, Any]) -> list[str]:
    """The facts to report when ``name`` is missing: its own missing inputs, recursively.

    A titration check undecided because the *new* dose cannot be converted to mg should say
    "dose in mg unknown", not "previous dose unknown".
    """
    spec = FACTS.get(name)
    if spec is None or not spec.inputs:
        return [name]
    roots = [r for i in spec.inputs if i not in present for r in root_missing(i, present)]
    return roots or [name]


def lookup(name: str) -> tuple[FactSpec | None, FamilySpec | None, str | None]:
    """Resolve a fact name: a scalar spec, or a family spec and its key."""
    if name in FACTS:
        return FACTS[name], None, None
    prefix, _, key = name.partition(".")
    if key and prefix in FAMILIES:
        return None, FAMILIES[prefix], key
    return None, None, None


# Families that count or name entries of the medication lists: an absent key is "none" only when
# every list was read completely (``medication_lists_complete``).
MEDICATION_FAMILIES = frozenset({"meds", "meds_named", "inpatient_meds", "drug_active_by_route"})


def companions(name: str) -> tuple[str, ...]:
    """Facts shown beside ``name`` in an alert's evidence: the names behind a count or a condition."""
    prefix, _, key = name.partition(".")
    named = {"meds": "meds_named", "cond": "cond_named"}.get(prefix)
    return (f"{named}.{key}",) if named and key else ()
