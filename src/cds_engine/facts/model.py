"""The patient at an ``as_of`` moment: what the sources hand to the engine.

This is the one fact model every source (CDS Hooks prefetch, FHIR bundles, Bulk NDJSON,
CSV/Parquet rows, hand-written JSON) produces. It is deliberately *structured* (close to
how a clinician thinks about the record); :mod:`cds_engine.facts.derive` turns it into the
flat, typed facts that rules read.

Rules of the model (they are what makes missing data explicit):

* ``None`` always means *not known*. It never means "no" or "zero". Booleans that a record
  can only assert (``pregnant``, ``lactating``) stay ``None`` when nothing is documented.
* Observations carry their comparator: ``eGFR >60`` is stored as ``value=60, comparator='>'``
  and stays a bound, never a number.
* ``as_of`` must carry a timezone: date arithmetic on naive datetimes silently shifts by the
  server's offset.
* Unknown keys are rejected (``extra='forbid'``) so a typo in a facts file is an error that
  names the field, not a silently ignored value.

No drug, class or threshold is named here: the pack's vocabulary gives codes their meaning.
"""

from __future__ import annotations

from datetime import date as Date
from datetime import datetime as DateTime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, NonNegativeFloat, model_validator

from cds_engine.codes import Coding  # shared value type, re-exported: the vocabulary uses it too

__all__ = [
    "Allergy",
    "Coding",
    "Condition",
    "Encounter",
    "LabResult",
    "Medication",
    "Order",
    "PatientFacts",
    "Pump",
    "Renal",
    "Reproductive",
    "TaperPlan",
    "TherapyHistory",
    "UnreadableResult",
]

OrderAction = Literal["new", "modify", "continue", "discontinue", "hold"]
Comparator = Literal["<", "<=", ">", ">="]
DialysisModality = Literal["none", "HD", "PD", "CRRT", "unspecified"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, str_strip_whitespace=True)


class LabResult(_Model):
    """One laboratory result. A result reported as a bound (">60") keeps its comparator."""

    value: float = Field(..., description="Numeric value in the stated unit")
    comparator: Comparator | None = Field(
        None, description="'>' for '>60': the value is a bound, not a number"
    )
    unit: str | None = Field(None, description="UCUM unit as reported, e.g. mL/min/{1.73_m2}")
    date: DateTime | Date = Field(..., description="Effective date/time of the result")
    method: str | None = Field(
        None, description="E.g. CKD-EPI 2021, MDRD, Cockcroft-Gault, or the LOINC code"
    )
    specimen: str | None = Field(
        None, description="Specimen reference: results of one specimen were taken at the same time"
    )
    race_stratum: Literal["black", "non-black"] | None = Field(
        None, description="Race-stratified eGFR equation ('among blacks'/'among non-blacks'); None: race-free"
    )


class UnreadableResult(_Model):
    """The newest result of a lab test that could not be read: never replaced by an older one."""

    date: DateTime | Date = Field(..., description="Effective date/time of the unreadable result")
    problem: Literal["no-value", "unit"] = Field(
        ..., description="no-value: no readable number (text, absent); unit: not a unit of this test"
    )


class Renal(_Model):
    """Kidney function. ``dialysis`` is explicit; ESRD on the problem list alone is *not* dialysis."""

    egfr: LabResult | None = Field(None, description="Most recent eGFR (mL/min/1.73 m2)")
    crcl: LabResult | None = Field(
        None, description="Creatinine clearance (Cockcroft-Gault, mL/min), optional"
    )
    dialysis: DialysisModality | None = Field(
        None, description="Documented dialysis modality; 'none' when documented as not on dialysis"
    )
    dialysis_dependent: bool | None = Field(None, description="Dialysis dependence documented (e.g. Z99.2)")
    last_dialysis_procedure: Date | None = Field(
        None, description="Date of the most recent dialysis procedure"
    )
    aki: bool | None = Field(
        None,
        description="Acute kidney injury asserted as current by the source (creatinine unstable); "
        "coded AKI diagnoses are read from ``conditions`` with their dates",
    )
    egfr_results: list[LabResult] = Field(
        default_factory=list,
        max_length=50,
        description="Readable eGFR results, newest first (race-stratified pairs are chosen from these)",
    )
    egfr_unreadable: UnreadableResult | None = Field(
        None, description="The newest eGFR had no readable value or a non-renal unit (then egfr is empty)"
    )


class Reproductive(_Model):
    pregnant: bool | None = Field(
        None, description="Documented pregnancy; never inferred from an hCG result alone"
    )
    gestational_age_weeks: NonNegativeFloat | None = None
    lactating: bool | None = None
    taper_or_neonatal_plan_documented: bool | None = Field(
        None, description="A plan to taper before delivery or to alert the neonatal team is documented"
    )
    maternal_exposure_at_delivery: bool | None = Field(
        None, description="For a neonate: mother took the pack's drug (orally) through delivery"
    )


class Allergy(_Model):
    """An allergy or intolerance. Only active, non-refuted entries count."""

    substance: Coding
    groups: list[str] = Field(
        default_factory=list, description="Allergy groups, if the source already knows them"
    )
    clinical_status: Literal["active", "inactive", "resolved"] | None = "active"
    verification_status: (
        Literal["confirmed", "unconfirmed", "presumed", "refuted", "entered-in-error"] | None
    ) = None
    category: str | None = Field(None, description="food | medication | environment | biologic")
    reaction: str | None = None


class Condition(_Model):
    """A problem-list entry or diagnosis."""

    code: Coding
    groups: list[str] = Field(default_factory=list, description="Condition groups, if already known")
    clinical_status: (
        Literal["active", "recurrence", "relapse", "inactive", "remission", "resolved"] | None
    ) = "active"
    verification_status: (
        Literal["unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error"]
        | None
    ) = None
    onset: Date | None = None
    recorded: Date | None = Field(None, description="Date the entry was recorded")
    encounter_diagnosis: bool | None = Field(
        None, description="A diagnosis of the current encounter"
    )


class Medication(_Model):
    """Another medicine the patient takes (or a previous/home order of the pack's drug)."""

    id: str | None = Field(None, description="Source id, so an order can say which medication it replaces")
    product: Coding
    classes: list[str] = Field(default_factory=list, description="Drug classes, if already known")
    status: Literal["active", "on-hold", "stopped", "completed", "cancelled", "draft", "entered-in-error"] = (
        "active"
    )
    route: str | None = Field(None, description="oral, intrathecal, iv, transdermal, …")
    form: str | None = Field(None, description="tablet, solution, suspension, injection, patch, …")
    concentration_mg_per_ml: float | None = Field(None, gt=0)
    daily_dose_mg: float | None = Field(None, ge=0)
    setting: Literal["home", "inpatient", "outpatient"] = "outpatient"
    start: Date | None = None
    prn: bool | None = Field(None, description="As needed (None: not stated; counted as scheduled)")


class TaperPlan(_Model):
    """A documented dose reduction schedule."""

    duration_days: float | None = Field(None, ge=0, description="Days from first reduction to the last dose")
    steps: list[float] = Field(default_factory=list, description="Daily doses (mg) of each step, if known")
    end_date: Date | None = None


class Order(_Model):
    """The order under review (draft order of an order-select/order-sign hook, or the screened order)."""

    id: str | None = None
    product: Coding
    form: str | None = Field(
        None, description="tablet, solution, suspension, granules, injection, patch, capsule …"
    )
    route: str | None = Field(
        None, description="oral, intrathecal, iv, im, sc, epidural, transdermal, topical …"
    )
    dose_amount: float | None = Field(None, description="Amount per administration, in dose_unit")
    dose_unit: str | None = Field(None, description="mg, mcg, g, mL … (checked, never guessed)")
    doses_per_day: float | None = Field(None, gt=0, description="Scheduled administrations per 24 h")
    schedule: list[float] | None = Field(
        None, description="Explicit amounts of each scheduled dose in 24 h (for unequal doses), in dose_unit"
    )
    prn: bool = False
    prn_max_doses_per_day: float | None = Field(None, ge=0)
    concentration_mg_per_ml: float | None = Field(None, gt=0, description="For liquids: stated strength")
    excipient_groups: list[str] = Field(
        default_factory=list, description="Allergy groups of the product's excipients"
    )
    indication: Coding | None = None
    indication_group: str | None = Field(None, description="Indication group, if the source already knows it")
    action: OrderAction = "new"
    reason: str | None = Field(
        None, description="Coded reason for stopping/holding, e.g. serious-adverse-reaction"
    )
    taper: TaperPlan | None = None
    replaces: str | None = Field(None, description="Medication.id this order modifies, continues or stops")
    replaces_presumed: bool = Field(
        False,
        description="The source only presumed the replacement (same drug and route, no priorPrescription, "
        "not the same id, not stopped by the same request); derive() confirms it or counts both orders",
    )
    date: DateTime | Date | None = None

    @model_validator(mode="after")
    def _dose_needs_unit(self) -> Order:
        if self.dose_amount is not None and self.dose_amount < 0:
            raise ValueError("dose_amount must not be negative")
        return self


class TherapyHistory(_Model):
    """History of the pack's drug for this patient (empty for a true new start)."""

    therapy_start: Date | None = Field(None, description="Start of continuous therapy")
    previous_daily_dose_mg: float | None = Field(None, ge=0)
    previous_max_single_dose_mg: float | None = Field(None, ge=0)
    last_dose_change: Date | None = None
    stable_dose_since: Date | None = None
    last_exposure: DateTime | Date | None = Field(
        None, description="Last time the drug was active or administered (new-start look-back)"
    )
    last_dose_time: DateTime | None = Field(None, description="Last documented administration")


class Pump(_Model):
    present: bool | None = None
    next_refill_date: Date | None = None
    alarm_active: bool | None = None


class Encounter(_Model):
    inpatient: bool = False
    admission_time: DateTime | None = None
    npo: bool | None = None


class PatientFacts(_Model):
    """Everything the rules may read about one patient at ``as_of``."""

    as_of: AwareDatetime = Field(..., description="The moment of evaluation; must carry a timezone")
    patient_id: str | None = Field(None, description="Opaque reference; never used as an engine session id")
    birth_date: Date | None = None
    age_years: float | None = Field(None, ge=0, le=130, description="Only when no birth date is known")
    sex: Literal["female", "male", "other", "unknown"] | None = None
    weight_kg: float | None = Field(None, gt=0, le=700)
    deceased: bool = False
    renal: Renal = Field(default_factory=Renal)
    reproductive: Reproductive = Field(default_factory=Reproductive)
    allergies: list[Allergy] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    medications: list[Medication] = Field(default_factory=list)
    medication_lists_complete: bool | None = Field(
        None,
        description="True only when every medication list (requests, statements, administrations) was "
        "read completely; None = not known. Cards call a class absent 'none' only when True.",
    )
    alcohol_use_current: bool | None = None
    order: Order | None = None
    history: TherapyHistory = Field(default_factory=TherapyHistory)
    monitoring: dict[str, Date] = Field(
        default_factory=dict,
        description="Last date of each monitoring item (efficacy_assessment, neurology_review, lft, glucose)",
    )
    pump: Pump = Field(default_factory=Pump)
    encounter: Encounter = Field(default_factory=Encounter)

    @model_validator(mode="after")
    def _birth_not_in_future(self) -> PatientFacts:
        if self.birth_date is not None and self.birth_date > self.as_of.date():
            raise ValueError("birth_date is after as_of")
        return self
