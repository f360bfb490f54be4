"""The rule-pack format, as pydantic models: the schema *is* the documentation.

A pack is one YAML file (``rules/<pack>/pack.yaml``). Conditions are a small tree language:

* ``{fact: NAME, <op>: VALUE, missing: fire|skip|cannot-assess}`` — ``op`` is one of
  ``eq ne lt lte gt gte in not_in exists``; ``VALUE`` may be ``{param: NAME}``. A comparison
  against a missing fact is neither true nor false: ``missing`` says what it means
  (default ``cannot-assess``, which makes the rule report that it could not be checked).
* ``{param: NAME, <op>: VALUE}`` — a test of a pack/site parameter (e.g. jurisdiction),
  decided when the pack loads.
* ``{all: [...]}``, ``{any: [...]}``, ``{not: {...}}``, ``{at_least: N, of: [...]}``.
* ``{ref: NAME}`` — a named condition from the pack's ``definitions`` (e.g. a renal band).

A tier may also say what it means for one-click dose suggestions (``one_click``: ``offer``,
``block``, ``caps`` — see :class:`OneClick`) and whether a suggestion must never produce an order
on which it fires (``dose_dependent: true``; proved by ``tests/test_suggestion_closure.py``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

__all__ = [
    "NEVER_SUPPRESSED_CATEGORIES",
    "ORDER_HOOKS",
    "AllOf",
    "AnyOf",
    "AtLeast",
    "Category",
    "ConditionSpec",
    "DoseCap",
    "FactTest",
    "FactValue",
    "Hook",
    "LocalAddition",
    "MissingDataItem",
    "NotOf",
    "OneClick",
    "Pack",
    "PackInfo",
    "ParamRef",
    "ParamTest",
    "Parameter",
    "Ref",
    "RuleSpec",
    "Severity",
    "Source",
    "Suggestion",
    "Tier",
    "never_suppressed",
]

Severity = Literal["info", "warning", "critical"]
Hook = Literal["order-select", "order-sign", "patient-view"]
ORDER_HOOKS: tuple[Hook, ...] = ("order-select", "order-sign")
SEVERITY_RANK: dict[str, int] = {"info": 1, "warning": 2, "critical": 3}
MissingPolicy = Literal["fire", "skip", "cannot-assess"]
Category = Literal[
    "allergy",
    "dose-range",
    "titration",
    "renal",
    "drug-interaction",
    "duplicate-therapy",
    "drug-disease",
    "pregnancy",
    "lactation",
    "age",
    "monitoring",
    "discontinuation",
    "order-error",
    "indication",
    "missing-data",
]
Scalar = bool | int | float | str
# Alert-fatigue controls never hide these: withdrawal/interruption (W-rules), allergy (A01), order
# errors (F-rules) and pregnancy (P01). They, and every critical tier, show every time they fire.
NEVER_SUPPRESSED_CATEGORIES: frozenset[str] = frozenset(
    {"discontinuation", "allergy", "order-error", "pregnancy"}
)


def never_suppressed(category: str, severity: str) -> bool:
    """True for tiers that must show every time: no once-per-encounter limit, no repeat suppression."""
    return severity == "critical" or category in NEVER_SUPPRESSED_CATEGORIES


OPERATORS = ("eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "exists")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ParamRef(_Strict):
    """``{param: NAME}`` — the value of a pack (or site) parameter."""

    param: str


Value = Scalar | list[Scalar] | ParamRef


class FactTest(_Strict):
    fact: str = Field(..., description="A fact of the catalog, e.g. daily_dose_mg or meds.opioid_agonist")
    eq: Value | None = None
    ne: Value | None = None
    lt: Value | None = None
    lte: Value | None = None
    gt: Value | None = None
    gte: Value | None = None
    in_: Value | None = Field(None, alias="in")
    not_in: Value | None = None
    exists: bool | None = None
    missing: MissingPolicy = "cannot-assess"

    @model_validator(mode="after")
    def _one_operator(self) -> FactTest:
        given = [op for op in OPERATORS if self.operand(op) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a fact test needs exactly one operator of {', '.join(OPERATORS)}; got {given or 'none'}"
            )
        return self

    def operand(self, op: str) -> Any:
        return getattr(self, "in_" if op == "in" else op)

    @property
    def op(self) -> str:
        return next(op for op in OPERATORS if self.operand(op) is not None)


class ParamTest(_Strict):
    param: str
    eq: Scalar | None = None
    ne: Scalar | None = None
    in_: list[Scalar] | None = Field(None, alias="in")

    @model_validator(mode="after")
    def _one_operator(self) -> ParamTest:
        if sum(v is not None for v in (self.eq, self.ne, self.in_)) != 1:
            raise ValueError("a parameter test needs exactly one of eq, ne, in")
        return self


class AllOf(_Strict):
    all: list[ConditionSpec] = Field(..., min_length=1)


class AnyOf(_Strict):
    any: list[ConditionSpec] = Field(..., min_length=1)


class NotOf(_Strict):
    not_: ConditionSpec = Field(..., alias="not")


class AtLeast(_Strict):
    at_least: int = Field(..., ge=1)
    of: list[ConditionSpec] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _reachable(self) -> AtLeast:
        if self.at_least > len(self.of):
            raise ValueError(f"at_least {self.at_least} of only {len(self.of)} conditions can never be true")
        return self


class Ref(_Strict):
    ref: str


def _condition_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return type(value).__name__
    if not isinstance(value, dict):
        return None
    for key, tag in (
        ("fact", "FactTest"),
        ("all", "AllOf"),
        ("any", "AnyOf"),
        ("not", "NotOf"),
        ("at_least", "AtLeast"),
        ("ref", "Ref"),
    ):
        if key in value:
            return tag
    if "param" in value:
        return "ParamTest"
    return None


ConditionSpec = Annotated[
    Annotated[FactTest, Tag("FactTest")]
    | Annotated[ParamTest, Tag("ParamTest")]
    | Annotated[AllOf, Tag("AllOf")]
    | Annotated[AnyOf, Tag("AnyOf")]
    | Annotated[NotOf, Tag("NotOf")]
    | Annotated[AtLeast, Tag("AtLeast")]
    | Annotated[Ref, Tag("Ref")],
    Discriminator(
        _condition_kind,
        custom_error_type="condition",
        custom_error_message="a condition needs one of: fact, param, all, any, not, at_least, ref",
    ),
]


class Parameter(_Strict):
    """A threshold or setting. Clinical cut-offs live here, never in code."""

    value: Scalar | list[Scalar]
    unit: str | None = None
    basis: Literal["label", "guideline", "literature", "design-choice", "derived", "policy"] = Field(
        ..., description="Where the value comes from; design-choice and derived values need sign-off"
    )
    signoff: Literal["approved", "pending"] = "pending"
    approved_by: str | None = Field(None, description="Who signed the value off (required when approved)")
    approved_on: str | None = Field(None, description="ISO date of the sign-off (required when approved)")
    note: str = ""
    sources: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _needs_signoff(self) -> Parameter:
        if self.basis in ("design-choice", "derived") and self.signoff == "approved" and not self.note:
            raise ValueError(
                "an approved design-choice/derived parameter needs a note saying who approved it"
            )
        return self


class Source(_Strict):
    title: str
    url: str | None = None
    tag: str | None = Field(None, description="Evidence tag of the knowledge file: V, A, S, R")


class Suggestion(_Strict):
    label: str
    action: Literal[
        "reduce-dose", "taper", "order-lab", "review", "change-product", "cancel-order", "monitor"
    ]
    dose_mg_per_day: float | None = Field(
        None,
        description="Daily dose named in the advice text (one-click regimens come from tier one_click caps)",
    )
    note: str | None = None
    tiers: list[str] | None = Field(
        None,
        min_length=1,
        description="Tier ids whose cards carry this suggestion (default: every tier of the rule). "
        "Advice must fit the tier that fired: a new start is never told to taper, an ongoing "
        "therapy never told to start.",
    )


class FactValue(_Strict):
    """``{fact: NAME}`` — the value of a derived fact (e.g. the previous daily dose)."""

    fact: str


class DoseCap(_Strict):
    """A limit a one-click dose suggestion must respect while its tier fires.

    ``max`` (at most) or ``below`` (strictly less than) a parameter or a fact, plus an optional
    parameter (``previous dose + allowed step``); ``when`` restricts it (e.g. to new starts) —
    a ``when`` that cannot be decided counts as true (the cap applies). A cap on a fact that is
    missing means no one-click suggestion at all.
    """

    dose: Literal["daily", "single"]
    max: ParamRef | FactValue | None = None
    below: ParamRef | FactValue | None = None
    plus: ParamRef | None = None
    when: ConditionSpec | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> DoseCap:
        if (self.max is None) == (self.below is None):
            raise ValueError("a dose cap needs exactly one of max, below")
        return self

    @property
    def bound(self) -> ParamRef | FactValue:
        return self.max if self.max is not None else self.below  # type: ignore[return-value]


class OneClick(_Strict):
    """What a tier means for one-click dose suggestions (the card text always stays).

    ``offer``: the tier's card may carry the order's one regimen suggestion. ``block``: when the
    tier fires, the order gets no one-click suggestion at all (text advice only). ``caps``: limits
    every suggestion for the order respects while the tier fires (whether or not it offers).
    """

    offer: bool = False
    block: bool = False
    caps: list[DoseCap] = Field(default_factory=list)

    @model_validator(mode="after")
    def _offer_or_block(self) -> OneClick:
        if self.offer and self.block:
            raise ValueError("a tier cannot both offer and block one-click suggestions")
        if self.offer and not self.caps:
            raise ValueError("a tier that offers a one-click suggestion declares its caps")
        return self


class Tier(_Strict):
    id: str
    severity: Severity
    when: ConditionSpec
    summary: str | None = Field(None, description="Overrides the rule summary for this tier")
    detail: str | None = None
    dose_dependent: bool = Field(
        False, description="A one-click suggestion must never produce an order on which this tier fires"
    )
    one_click: OneClick | None = None
    hooks: list[Hook] | None = Field(
        None, min_length=1, description="CDS Hooks on which this tier runs (default: its rule's hooks)"
    )
    suppressible: bool = Field(
        False,
        description="Repeat suppression allowed (sign-off pending): after a prescriber overrides this tier's "
        "card, the same card on unchanged facts is stored but not shown for the site's "
        "suppress_window_minutes. Refused on critical tiers and never-suppressed categories.",
    )


class SeedLink(_Strict):
    statements: list[str] = Field(
        default_factory=list, description="Seed discrepancy-register ids, e.g. SD-31"
    )
    note: str


class LocalAddition(_Strict):
    """Marks a rule that is not in the pack's knowledge source (a local addition awaiting sign-off)."""

    reason: str = Field(..., min_length=1, description="Why the rule was added beyond the knowledge source")
    signoff: Literal["approved", "pending"] = "pending"
    approved_by: str | None = None
    approved_on: str | None = None

    @model_validator(mode="after")
    def _approval_named(self) -> LocalAddition:
        if self.signoff == "approved" and not (self.approved_by and self.approved_on):
            raise ValueError("an approved local addition names approved_by and approved_on")
        return self


class RuleSpec(_Strict):
    id: str = Field(..., pattern=r"^[A-Z][A-Z0-9]*-[A-Z][0-9]{2}$")
    title: str
    category: Category
    applies: ConditionSpec | None = Field(None, description="Condition shared by every tier (ANDed)")
    tiers: list[Tier] = Field(..., min_length=1)
    summary: str
    detail: str
    suggestions: list[Suggestion] = Field(default_factory=list)
    sources: list[str] = Field(..., min_length=1)
    seed: SeedLink
    local_addition: LocalAddition | None = Field(
        None, description="Set when the rule is a local addition to the knowledge source"
    )
    override_reasons: list[str] | None = Field(
        None,
        description="Codes of the pack's override_reasons offered on this rule's cards, in order "
        "(default: every reason marked default)",
    )
    hooks: list[Hook] = Field(
        default_factory=lambda: list(ORDER_HOOKS),
        min_length=1,
        description="CDS Hooks on which this rule runs (default: order-select and order-sign); "
        "patient-view runs it at chart open on the patient's current therapy",
    )

    @model_validator(mode="after")
    def _suppression_allowed(self) -> RuleSpec:
        for tier in self.tiers:
            if tier.suppressible and never_suppressed(self.category, tier.severity):
                raise ValueError(
                    f"tier {tier.id!r} cannot be suppressible: {tier.severity} tiers and "
                    f"{', '.join(sorted(NEVER_SUPPRESSED_CATEGORIES))} rules always show"
                )
        return self

    @model_validator(mode="after")
    def _tier_ids(self) -> RuleSpec:
        seen: set[str] = set()
        for tier in self.tiers:
            if not tier.id.startswith(self.id + "."):
                raise ValueError(f"tier id {tier.id!r} must start with the rule id {self.id!r} and a dot")
            if tier.id in seen:
                raise ValueError(f"duplicate tier id {tier.id!r}")
            seen.add(tier.id)
        for suggestion in self.suggestions:
            unknown = [t for t in suggestion.tiers or [] if t not in seen]
            if unknown:
                # a misspelt tier id would silently drop the advice from every card
                raise ValueError(f"suggestion {suggestion.label!r} names unknown tiers {unknown}")
        return self


class Approval(_Strict):
    status: Literal["approved", "pending-local-clinical-validation"]
    approver: str | None = None
    date: str | None = None
    note: str = ""


class Drug(_Strict):
    drug_class: str = Field(..., alias="class", description="Vocabulary drug class that is this pack's drug")
    display: str


class Triggers(_Strict):
    drug_classes: list[str] = Field(..., min_length=1, description="Orders of these classes are reviewed")
    partner_classes: list[str] = Field(
        default_factory=list,
        description="Orders of these classes are reviewed when the pack's drug is active",
    )
    facts: list[str] = Field(
        default_factory=list,
        description="Bool facts that make the pack review a patient by themselves (e.g. in-utero exposure)",
    )


#: HL7 ActDetectedIssueManagementCode concepts (system http://terminology.hl7.org/CodeSystem/v3-ActCode)
#: an override reason may be mapped to, so an exported FHIR DetectedIssue can name the mitigation.
MANAGEMENT_CODES: dict[str, str] = {
    "1": "Therapy Appropriate", "2": "Assessed Patient", "3": "Patient Explanation",
    "4": "Consulted Other Source", "5": "Consulted Prescriber", "6": "Prescriber Declined Change",
    "7": "Interacting Therapy No Longer Active/Planned", "8": "Other Action Taken",
    "9": "Instituted Ongoing Monitoring Program", "10": "Provided Patient Education",
    "11": "Added Concurrent Therapy", "12": "Temporarily Suspended Concurrent Therapy",
    "13": "Stopped Concurrent Therapy", "22": "appropriate indication or diagnosis",
    "23": "prior therapy documented",
}


class OverrideReason(_Strict):
    code: str
    display: str
    default: bool = Field(
        True, description="Offered on every rule that does not list its own override_reasons"
    )
    management_code: str | None = Field(
        None,
        description="ActDetectedIssueManagementCode (v3-ActCode) this reason means, for the mitigation of an "
        "exported FHIR DetectedIssue; a reason without one exports no mitigation (sign-off pending)",
    )

    @model_validator(mode="after")
    def _known_management_code(self) -> OverrideReason:
        if self.management_code is not None and self.management_code not in MANAGEMENT_CODES:
            raise ValueError(
                f"management_code {self.management_code!r} of override reason {self.code!r} is not an "
                f"ActDetectedIssueManagementCode this engine knows ({', '.join(MANAGEMENT_CODES)})"
            )
        return self


class MissingDataItem(_Strict):
    """How a missing fact is reported when rules that need it cannot be assessed."""

    item: str
    facts: list[str] = Field(..., min_length=1)
    label: str
    severity: Literal["info", "warning"] = "info"
    summary: str = Field(..., description="Card summary; may use {rules} for the checks not done")
    covered_by: list[str] = Field(
        default_factory=list, description="Rules whose own alert already covers this gap"
    )


class SeedRegisterEntry(_Strict):
    id: str
    claim: str
    verdict: str
    handling: str


class PackInfo(_Strict):
    id: str = Field(..., pattern=r"^[a-z][a-z0-9-]*$")
    title: str
    version: str
    status: Literal["draft", "active", "retired"]
    jurisdiction: str
    url: str = Field(..., description="Canonical URL; cards use it as source.topic.system")
    drug: Drug
    approval: Approval
    triggers: Triggers
    description: str = ""
    knowledge_source: str = ""


class Pack(_Strict):
    pack: PackInfo
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    definitions: dict[str, ConditionSpec] = Field(default_factory=dict)
    sources: dict[str, Source]
    override_reasons: list[OverrideReason] = Field(..., min_length=1)
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Card text for coded values a message shows (an indication group id -> its words)",
    )
    missing_data: list[MissingDataItem] = Field(default_factory=list)
    seed_register: list[SeedRegisterEntry] = Field(default_factory=list)
    rules: list[RuleSpec] = Field(..., min_length=1)
    bulk_acknowledge: list[str] = Field(
        default_factory=list,
        description="Rule ids whose non-critical alerts a reviewer may acknowledge in bulk, one tier at a "
        "time (default: none — every alert is decided one by one)",
    )

    @model_validator(mode="after")
    def _bulk_rules_exist(self) -> Pack:
        known = {r.id for r in self.rules}
        unknown = sorted(set(self.bulk_acknowledge) - known)
        if unknown:
            raise ValueError(f"bulk_acknowledge names unknown rule(s): {', '.join(unknown)}")
        # the rules that must show every time must also be decided one by one (issue #18 item 3)
        never = sorted(r.id for r in self.rules if r.id in self.bulk_acknowledge
                       and r.category in NEVER_SUPPRESSED_CATEGORIES)
        if never:
            raise ValueError(f"bulk_acknowledge names rule(s) that are decided one by one "
                             f"({', '.join(sorted(NEVER_SUPPRESSED_CATEGORIES))}): {', '.join(never)}")
        return self

    @field_validator("rules")
    @classmethod
    def _unique_rule_ids(cls, rules: list[RuleSpec]) -> list[RuleSpec]:
        seen: set[str] = set()
        for rule in rules:
            if rule.id in seen:
                raise ValueError(f"duplicate rule id {rule.id}")
            seen.add(rule.id)
        return rules


for _model in (AllOf, AnyOf, NotOf, AtLeast, DoseCap, OneClick, Tier, RuleSpec, Pack):
    _model.model_rebuild()
