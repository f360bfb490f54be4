"""From tier outcomes to alerts — shared by every evaluator so they can only differ in outcomes.

A rule raises one alert, at its highest TRUE tier. Tiers left UNKNOWN (a fact they need is
missing) are never dropped silently: a higher undecided tier is listed on the alert, and a rule
that could not be decided at all is reported through a grouped "cannot assess" alert — one
per missing data item, at most a warning — unless a rule that covers that gap already fired.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cds_engine.alerts import SEVERITY_ORDER, Alert, AlertSource, AlertSuggestion
from cds_engine.facts.catalog import companions, root_missing
from cds_engine.messages import Parts, fill, fmt_value, render, with_params
from cds_engine.rules.compile import CompiledPack, CompiledRule, CompiledTier
from cds_engine.rules.conditions import BOUND_SUFFIXES, TRUE, UNKNOWN, facts_of, unknown_leaves
from cds_engine.rules.governance import approval_state
from cds_engine.rules.pack_memo import PackMemo, WeakTable, remember

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
    for fact, default, bounds, named in _evidence_plan(tier):
        if fact in flat:
            out[fact] = flat[fact]
        elif default is not None:
            out[fact] = default
        for key in bounds:
            if key in flat:
                out[key] = flat[key]
        for name in named:  # the medicines behind a class count
            if name in flat:
                out[name] = flat[name]
    return out


_EvidencePlan = tuple[tuple[str, Any, tuple[str, ...], tuple[str, ...]], ...]
# Per tier (by identity; tiers and their trees are frozen): each leaf's fact, default, bound keys
# and companion facts, in leaf order. Every alert reads its tier's evidence, and spelling these
# out per call (suffix strings, companion look-ups) was a tenth of build_alerts (issue 19
# profile). The tier is held weakly beside its plan (pack_memo.remember): a recycled id never
# returns another tier's, and a hot reload's old tiers (and their trees) are freed with their
# pack instead of staying here; the table is also emptied when large.
_EVIDENCE: WeakTable[_EvidencePlan] = {}
_EVIDENCE_LIMIT = 8192


def _evidence_plan(tier: CompiledTier) -> _EvidencePlan:
    known = _EVIDENCE.get(id(tier))
    if known is not None and known[0]() is tier:
        return known[1]
    plan = tuple(
        (
            leaf.fact,
            leaf.default,
            tuple(leaf.fact + suffix for suffix in BOUND_SUFFIXES) if leaf.bounded else (),
            companions(leaf.fact),
        )
        for leaf in facts_of(tier.node)
    )
    if len(_EVIDENCE) >= _EVIDENCE_LIMIT:
        _EVIDENCE.clear()
    return remember(_EVIDENCE, tier, plan)


def _approval_note(pack: CompiledPack) -> str:
    """The card footer: the pack's approval and how many thresholds carry a named sign-off."""
    return _plan(pack).note


@dataclass(frozen=True)
class _PackPlan:
    """What every alert of one loaded pack repeats, worked out once per pack instead of per call.

    The approval sentence counts the pack's parameters (~35 us a call), and the sources of a rule
    are models validated on construction (issue 19 profile). The source models are shared
    between alerts: nothing changes an alert's parts after it is built (alerts are frozen).
    ``spec`` and ``rules`` are the pack's own objects when the plan was made: a pack given a new
    spec or rule list gets a new plan.
    """

    spec: Any
    rules: list[CompiledRule]
    params: dict[str, Any]
    note: str
    rule_of: dict[str, int]  # tier id -> index of its rule in ``rules``
    sources: tuple[tuple[AlertSource, ...], ...]  # per rule, in ``rules`` order
    # per rule: each suggestion's tiers (None: every tier) and its fields
    suggestions: tuple[tuple[tuple[frozenset[str] | None, dict[str, Any]], ...], ...]
    titles: dict[str, str]  # rule id -> title (the "cannot assess" details list them)
    items: dict[str, Any]  # fact -> the pack's missing-data item that names it
    # template -> its parts with the pack's parameters filled in (messages.with_params), filled as
    # the pack's templates are first rendered (a race only computes one twice)
    templates: dict[str, Parts] = field(default_factory=dict)

    def render(self, template: str, flat: Mapping[str, Any], extra: Mapping[str, Any]) -> str:
        """``messages.render(template, flat, params, extra, labels)`` of this pack, in fewer steps."""
        parts = self.templates.get(template)
        if parts is None:
            parts = self.templates[template] = with_params(template, self.params)
        return fill(parts, flat, self.params, extra, self.spec.labels)


def _build_plan(pack: CompiledPack) -> _PackPlan:
    spec = pack.spec
    return _PackPlan(
        spec=spec,
        rules=pack.rules,
        params=pack.params,
        note=approval_state(spec).sentence(),
        rule_of={t.id: i for i, rule in enumerate(pack.rules) for t in rule.tiers},
        sources=tuple(
            tuple(AlertSource(id=sid, title=spec.sources[sid].title, url=spec.sources[sid].url)
                  for sid in rule.spec.sources)
            for rule in pack.rules
        ),
        suggestions=tuple(
            tuple(
                (None if sg.tiers is None else frozenset(sg.tiers), sg.model_dump(exclude={"tiers"}))
                for sg in rule.spec.suggestions
            )
            for rule in pack.rules
        ),
        titles={r.spec.id: r.spec.title for r in pack.rules},
        items={fact: item for item in spec.missing_data for fact in item.facts},
    )


def _plan_fits(plan: _PackPlan, pack: CompiledPack) -> bool:
    return plan.spec is pack.spec and plan.rules is pack.rules and plan.params is pack.params


# a reloaded pack is a new object, so it gets its own plan; a pack given a new spec, rule list or
# parameters gets a new one too
_PLANS: PackMemo[_PackPlan] = PackMemo(_build_plan, valid=_plan_fits)
_plan = _PLANS.get


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
    plan = _plan(pack)
    note = plan.note
    rule_of = plan.rule_of
    # rules with a tier not FALSE, in pack order: the others have nothing fired, nothing undecided
    # (one pass over the outcomes instead of one look-up per tier of every rule)
    live = sorted({i for tier_id, value in outcomes.items()
                   if value and (i := rule_of.get(tier_id)) is not None})
    rules = plan.rules
    for index in live:
        rule = rules[index]
        ranked = rule.ranked_tiers
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
        detail = plan.render(chosen.detail, flat, extra).strip()
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
                summary=short_text(plan.render(chosen.summary, flat, extra)),
                detail=f"{detail}\n\n_{note}_",
                evidence=evidence,
                missing=sorted({m for _, ms in missing_by_tier for m in ms}),
                not_assessed=[t.id for t in open_tiers],
                suggestions=[  # only the advice that fits the tier that fired (schema.Suggestion.tiers)
                    AlertSuggestion(**{**fields,
                                       "label": plan.render(fields["label"], flat, extra)})
                    for tiers, fields in plan.suggestions[index]
                    if tiers is None or chosen.id in tiers
                ],
                sources=list(plan.sources[index]),
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
    plan = _plan(pack)
    items = plan.items
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
        titles = plan.titles
        lines = [f"- {t}: {titles.get(t.split('.')[0], '')}" for t in tiers]
        what = f"is known only as {bound}" if bound else "is missing"
        detail = (
            f"**{label}** {what}, so these checks could not be done:\n"
            + "\n".join(lines)
            + f"\n\n_{note}_"  # the fact names are the alert's ``missing`` field: not clinician text
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
