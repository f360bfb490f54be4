"""Which rules depend on which prefetch key — to name the checks lost when a key is unavailable.

A missing eGFR is visible to the rules (they report "cannot assess"), but missing *lists* are not:
with no conditions at all, "no epilepsy" looks exactly like "conditions unavailable". So when a
prefetch key could not be had, the rules reading facts fed by that key are listed on a card.
The map is from key to fact names of :mod:`cds_engine.facts.catalog` (``prefix.*`` for families);
the rules are found from the compiled conditions, so a new rule is covered without a change here.
"""

from __future__ import annotations

from cds_engine.alerts import Alert
from cds_engine.rules.compile import CompiledPack
from cds_engine.rules.conditions import facts_of

__all__ = ["KEY_FACTS", "UNAVAILABLE_RULE", "rules_depending_on", "unavailable_alert"]

UNAVAILABLE_RULE = "data-unavailable"

_MEDICINES = frozenset(
    {
        "meds.*",
        "inpatient_meds.*",
        "drug_active_count",
        "drug_active_by_route.*",
        "drug_liquid_concentrations",
        "days_on_therapy",
        "days_since_dose_change",
        "days_since_last_exposure",
        "stable_dose_days",
        "previous_daily_dose_mg",
        "previous_max_single_dose_mg",
        "daily_dose_change_mg",
        "single_dose_change_mg",
        "daily_dose_reduction_pct",
        "dose_increase",
        "efficacy_assessed_since_stable",
        "order_action",
        "combined_oral_daily_mg",
        "active_oral_orders",
        "presumed_replaced_order",
        "total_if_additional_mg",
        "order_additive_to",
    }
)

KEY_FACTS: dict[str, frozenset[str]] = {
    "patient": frozenset({"age_years", "age_days", "sex", "weight_kg"}),
    "encounter": frozenset({"inpatient", "hours_since_admission", "npo", "inpatient_meds.*"}),
    "medicationRequests": _MEDICINES,
    "medicationStatements": _MEDICINES,
    "medicationAdministrations": frozenset({"hours_since_last_dose", "days_since_last_exposure"}),
    "conditions": frozenset(
        {
            "cond.*",
            "cond_history.*",
            "cond_onset_days.*",
            "cond_days.*",
            "cond_encounter.*",
            "pregnant",
            "lactating",
            "dialysis",
            "aki",
            "gestational_age_weeks",
            "taper_or_neonatal_plan_documented",
        }
    ),
    "allergies": frozenset({"allergy.*", "excipient_allergy"}),
    "dialysisProcedures": frozenset({"dialysis", "dialysis_modality"}),
    "observations": frozenset(
        {
            "egfr",
            "egfr_days_old",
            "egfr_method",
            "crcl",
            "crcl_days_old",
            "renal_fn",
            "renal_fn_days_old",
            "renal_fn_measure",
            "renal_fn_current",
            "egfr_unreadable",
            "egfr_unreadable_date",
            "egfr_unreadable_problem",
            "gestational_age_weeks",
            "pregnant",
            "days_since.*",
            "efficacy_assessed_since_stable",
        }
    ),
}


def _matches(fact: str, patterns: frozenset[str]) -> bool:
    if fact in patterns:
        return True
    base = fact.split("__", 1)[0]  # bounds: egfr__gt
    return base in patterns or (("." in fact) and f"{fact.split('.', 1)[0]}.*" in patterns)


def rules_depending_on(pack: CompiledPack, keys: set[str] | list[str]) -> dict[str, str]:
    """rule id → title for every rule of ``pack`` that reads a fact fed by one of ``keys``."""
    patterns = frozenset().union(*(KEY_FACTS.get(k, frozenset()) for k in keys)) if keys else frozenset()
    out: dict[str, str] = {}
    for rule in pack.rules:
        for tier in rule.tiers:
            if any(_matches(leaf.fact, patterns) for leaf in facts_of(tier.node)):
                out[rule.spec.id] = rule.spec.title
                break
    return out


def unavailable_alert(pack: CompiledPack, unavailable: dict[str, str]) -> Alert:
    """One 'cannot assess' alert naming the unreadable record parts and the checks they feed."""
    rules = rules_depending_on(pack, set(unavailable))
    keys = ", ".join(sorted(unavailable))
    summary = (
        f"Part of the record could not be read ({keys}): {len(rules)} check(s) not done — review manually"
        if rules
        else f"Part of the record could not be read ({keys}) — review it manually"
    )
    if len(summary) > 139:
        summary = f"Part of the record could not be read: {len(rules)} check(s) not done — review manually"
    lines = [f"- **{key}**: {why}" for key, why in sorted(unavailable.items())]
    detail = (
        "Some of the patient's record was not available to this service, so advice may be incomplete.\n\n"
    )
    detail += "\n".join(lines)
    if rules:
        detail += "\n\nChecks not done (or that may have missed a finding):\n"
        detail += "\n".join(f"- {rid}: {title}" for rid, title in sorted(rules.items()))
    info = pack.spec.pack
    return Alert(
        kind="cannot-assess",
        rule_id=UNAVAILABLE_RULE,
        tier_id=f"{UNAVAILABLE_RULE}.record",
        title="Record data unavailable",
        category="missing-data",
        severity="warning" if rules else "info",
        summary=summary,
        detail=detail,
        missing=sorted(unavailable),
        not_assessed=sorted(rules),
        pack_id=info.id,
        pack_version=info.version,
        pack_hash=pack.content_hash,
        pack_url=info.url,
        pack_status=info.status,
        approval=info.approval.status,
    )
