"""From tier outcomes to alerts — shared by every evaluator so they can only differ in outcomes.

A rule raises one alert, at its highest TRUE tier. Tiers left UNKNOWN (a fact they need is
missing) are never dropped silently: a higher undecided tier is listed on the alert, and a rule
that could not be decided at all is reported through a grouped "cannot assess" alert — one
per missing data item, at most a warning — unless a rule that covers that gap already fired.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cds_engine.alerts import SEVERITY_ORDER, Alert, AlertSource, AlertSuggestion
from cds_engine.facts.catalog import companions, root_missing
from cds_engine.messages import fmt_value, render
from cds_engine.rules.compile import CompiledPack, CompiledTier
from cds_engine.rules.conditions import BOUND_SUFFIXES, TRUE, UNKNOWN, facts_of, unknown_leaves
from cds_engine.rules.governance import approval_state

__all__ = ["MISSING_DATA_RULE", "build_alerts", "evidence_of", "missing_data_alerts", "short_text"]

MISSING_DATA_RULE = "missing-data"


def short_text(text: str, limit: int = 139) -> str:
    """An alert summary on one line, cut to ``limit`` characters.

    Public because the vector evaluator must word its alerts exactly alike."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def evidence_of(tier: CompiledTier, flat: Mapping[str, Any]) -> dict[str, Any]:
    """The fact values a tier's condition read (present ones, bounds included)."""
    out: dict[str, Any] = {}
    for leaf in facts_of(tier.node):
        if leaf.fact in flat:
            out[leaf.fact] = flat[leaf.fact]
        elif leaf.default is not None:
            out[leaf.fact] = leaf.default
        if leaf.bounded:
            for suffix in BOUND_SUFFIXES:
                if leaf.fact + suffix in flat:
                    out[leaf.fact + suffix] = flat[leaf.fact + suffix]
        for name in companions(leaf.fact):  # the medicines behind a class count
            if name in flat:
                out[name] = flat[name]
    return out


def _approval_note(pack: CompiledPack) -> str:
    """The card footer: the pack's approval and how many thresholds carry a named sign-off."""
    return approval_state(pack.spec).sentence()


def _common(pack: CompiledPack) -> dict[str, Any]:
    info = pack.spec.pack
    return {
        "pack_id": info.id,
        "pack_version": info.version,
        "pack_hash": pack.content_hash,
        "pack_url": info.url,
        "pack_status": info.status,
        "approval": info.approval.status,
    }


def build_alerts(
    pack: CompiledPack, flat: Mapping[str, Any], outcomes: Mapping[str, int], site_hash: str | None = None
) -> list[Alert]:
    """Alerts of one pack for one patient, most severe first, stamped with the site settings hash."""
    alerts: list[Alert] = []
    undecided: list[tuple[CompiledTier, list[str]]] = []  # tiers left UNKNOWN and the facts they lacked
    fired_rules: set[str] = set()
    note = _approval_note(pack)
    for rule in pack.rules:
        ranked = rule.ranked_tiers
        if not any(outcomes.get(t.id) for t in ranked):
            continue  # every tier FALSE: nothing fired, nothing undecided
        chosen = next((t for t in ranked if outcomes.get(t.id) == TRUE), None)
        floor = SEVERITY_ORDER[chosen.severity] if chosen else 0
        open_tiers = [
            t for t in ranked if outcomes.get(t.id) == UNKNOWN and SEVERITY_ORDER[t.severity] > floor
        ]
        missing_by_tier = [
            (
                t,
                sorted(
                    {root for leaf in unknown_leaves(t.node, flat) for root in root_missing(leaf.fact, flat)}
                ),
            )
            for t in open_tiers
        ]
        undecided.extend(missing_by_tier)
        if chosen is None:
            continue
        fired_rules.add(rule.spec.id)
        extra = {"rule_id": rule.spec.id, "tier_id": chosen.id, "severity": chosen.severity}
        detail = render(chosen.detail, flat, pack.params, extra, pack.spec.labels).strip()
        evidence = evidence_of(chosen, flat)
        assumed = _route_assumption(evidence, flat)
        if assumed:
            detail += f"\n\nRoute {assumed}."
        if open_tiers:
            detail += "\n\nNot assessed for lack of data: " + ", ".join(
                f"{t.id} (missing {', '.join(m) or 'data'})" for t, m in missing_by_tier
            )
        alerts.append(
            Alert(
                rule_id=rule.spec.id,
                tier_id=chosen.id,
                title=rule.spec.title,
                category=rule.spec.category,
                severity=chosen.severity,  # type: ignore[arg-type]
                summary=short_text(render(chosen.summary, flat, pack.params, extra, pack.spec.labels)),
                detail=f"{detail}\n\n_{note}_",
                evidence=evidence,
                missing=sorted({m for _, ms in missing_by_tier for m in ms}),
                not_assessed=[t.id for t in open_tiers],
                suggestions=[
                    AlertSuggestion(**{**sg.model_dump(),
                                       "label": render(sg.label, flat, pack.params, extra,
                                                       pack.spec.labels)})
                    for sg in rule.spec.suggestions
                ],
                sources=[
                    AlertSource(id=sid, title=pack.spec.sources[sid].title, url=pack.spec.sources[sid].url)
                    for sid in rule.spec.sources
                ],
                **_common(pack),
            )
        )
    alerts.extend(missing_data_alerts(pack, flat, undecided, fired_rules, note))
    if site_hash is not None:
        alerts = [a.model_copy(update={"site_hash": site_hash}) for a in alerts]
    return sorted(alerts, key=Alert.sort_key)


def _route_assumption(evidence: Mapping[str, Any], flat: Mapping[str, Any]) -> str | None:
    """'not stated — checked as oral' when a check read a route the order did not state as written."""
    if "order_route_checked" not in evidence:
        return None
    if flat.get("order_route_stated") and flat.get("order_route_recognised"):
        return None
    shown = flat.get("order_route_shown")
    return shown if isinstance(shown, str) else None


def _bound_of(facts: list[str], flat: Mapping[str, Any]) -> str | None:
    """'>60' when a fact is known only as a bound (the gap is precision, not absence)."""
    for fact in facts:
        for suffix, sign in (("__gt", ">"), ("__ge", "≥"), ("__lt", "<"), ("__le", "≤")):
            if fact + suffix in flat:
                return sign + fmt_value(flat[fact + suffix])
    return None


def missing_data_alerts(
    pack: CompiledPack,
    flat: Mapping[str, Any],
    undecided: list[tuple[CompiledTier, list[str]]],
    fired_rules: set[str],
    note: str,
) -> list[Alert]:
    """The grouped "cannot assess" alerts, one per missing data item.

    Public because every evaluator (engine, vector) must share one wording."""
    items = {fact: item for item in pack.spec.missing_data for fact in item.facts}
    grouped: dict[str, dict[str, Any]] = {}
    for tier, missing in undecided:
        for fact in missing or ["data"]:
            item = items.get(fact)
            key = item.item if item else fact
            entry = grouped.setdefault(key, {"item": item, "facts": set(), "tiers": [], "rank": 0})
            entry["facts"].add(fact)
            entry["rank"] = max(entry["rank"], SEVERITY_ORDER[tier.severity])
            if tier.id not in entry["tiers"]:
                entry["tiers"].append(tier.id)
    out: list[Alert] = []
    for key, entry in grouped.items():
        item = entry["item"]
        if item is not None and fired_rules & set(item.covered_by):
            continue  # the covering rule's own alert already says what is missing
        tiers: list[str] = entry["tiers"]
        rules_text = ", ".join(dict.fromkeys(t.split(".")[0] for t in tiers))
        label = item.label if item else key.replace("_", " ")
        bound = _bound_of(sorted(entry["facts"]), flat)
        if bound is not None:
            summary = f"{label} known only as {bound}: {rules_text} undecided — is an exact value needed?"
        elif item is not None:
            summary = render(item.summary, {}, pack.params, {"rules": rules_text})
        else:
            summary = f"{label} unknown: {rules_text} not checked — document it to complete the review"
        # never louder than the checks it stands for (an info-level check blocked gives an info report)
        ceiling = min(SEVERITY_ORDER[item.severity] if item else 1, entry["rank"])
        severity = next(name for name, rank in SEVERITY_ORDER.items() if rank == ceiling)
        titles = {r.spec.id: r.spec.title for r in pack.rules}
        lines = [f"- {t}: {titles.get(t.split('.')[0], '')}" for t in tiers]
        what = f"is known only as {bound}" if bound else "is missing"
        detail = (
            f"**{label}** {what}, so these checks could not be done:\n"
            + "\n".join(lines)
            + f"\n\nMissing facts: {', '.join(sorted(entry['facts']))}.\n\n_{note}_"
        )
        out.append(
            Alert(
                kind="cannot-assess",
                rule_id=MISSING_DATA_RULE,
                tier_id=f"{MISSING_DATA_RULE}.{key}",
                title=f"Cannot assess: {label}",
                category="missing-data",
                severity=severity,  # type: ignore[arg-type]
                summary=short_text(summary),
                detail=detail,
                evidence={},
                missing=sorted(entry["facts"]),
                not_assessed=tiers,
                **_common(pack),
            )
        )
    return out
