"""Stored alerts → FHIR R4 DetectedIssue NDJSON (``cds-engine export --format fhir-ndjson``).

The wording (order sentence, evidence labels) is the review page's, so what a FHIR server receives
reads like what a reviewer sees. Mitigations come only from what happened: an accepted suggestion,
or an override reason the pack maps to an ActDetectedIssueManagementCode. Packs are read for that
mapping only; an alert of a pack no longer installed exports without coded mitigations (its text
still says what the prescriber chose).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

from cds_engine.alerts import Alert, AlertSource, AlertSuggestion
from cds_engine.detected_issue import IssueContext, Mitigation, detected_issue, dumps
from cds_engine.rules.schema import OverrideReason
from cds_engine.service.review.alert_view import evidence_rows, order_sentence
from cds_engine.store.issue_export import ExportItem
from cds_engine.store.models import PrescriberFeedback

__all__ = ["issues_from_store", "reason_index", "write_ndjson"]

ReasonIndex = Mapping[str, Mapping[str, OverrideReason]]  # pack id → reason code → reason


def _alert(row: Any) -> Alert:
    """The stored row as the Alert it was (stored rows were validated when they were written)."""
    return Alert.model_construct(
        kind=row.kind, rule_id=row.rule_id, tier_id=row.tier_id, title=row.title, category=row.category,
        severity=row.severity, summary=row.summary, detail=row.detail, evidence=dict(row.evidence or {}),
        missing=list(row.missing or []), not_assessed=list(row.not_assessed or []),
        suggestions=[AlertSuggestion.model_validate(s) for s in row.suggestions or []],
        sources=[AlertSource.model_validate(s) for s in row.sources or []],
        pack_id=row.pack_id, pack_version=row.pack_version, pack_hash=row.pack_hash,
        pack_url=row.pack_url or "", pack_status="", approval=row.approval or "", site_hash=None,
    )


def _mitigations(alert: Alert, feedback: list[PrescriberFeedback], reasons: ReasonIndex) -> list[Mitigation]:
    out: list[Mitigation] = []
    by_code = reasons.get(alert.pack_id, {})
    for fb in feedback:
        if fb.outcome == "accepted" and fb.accepted_suggestions:
            labels = "; ".join(s.label for s in alert.suggestions) or "a suggestion of the card"
            text = (f"Prescriber accepted the suggestion: {labels}" if len(alert.suggestions) == 1
                    else f"Prescriber accepted a suggestion of the card (offered: {labels})")
            out.append(Mitigation(text=text, date=fb.outcome_timestamp))
        elif fb.outcome == "overridden" and fb.override_reason_code:
            reason = by_code.get(fb.override_reason_code)
            if reason is not None and reason.management_code:
                out.append(Mitigation(text=f"Overridden: {reason.display}", code=reason.management_code,
                                      date=fb.outcome_timestamp))
    return out


def _issue(item: ExportItem, reasons: ReasonIndex) -> dict[str, Any]:
    alert = _alert(item.alert)
    ev = item.evaluation
    lines = [f"{row.label}: {row.value}" for row in evidence_rows(alert.evidence)]
    ctx = IssueContext(
        patient_ref=ev.patient_ref, identified=ev.as_of, alert_id=item.alert.id, order=item.order,
        order_label=order_sentence(item.order, alert.evidence), order_key=ev.order_key,
        status="final" if item.alert.shown else "preliminary",
        mitigations=_mitigations(alert, item.feedback, reasons), evidence_lines=lines,
    )
    return detected_issue(alert, ctx)


def issues_from_store(items: Iterable[ExportItem], reasons: ReasonIndex) -> Iterator[dict[str, Any]]:
    for item in items:
        yield _issue(item, reasons)


def write_ndjson(issues: Iterable[Mapping[str, Any]], out: IO[str]) -> int:
    count = 0
    for line in dumps(issues):
        out.write(line)
        count += 1
    return count


def reason_index(packs: Iterable[Any]) -> dict[str, dict[str, OverrideReason]]:
    """pack id → override reason code → reason, from compiled packs."""
    return {p.id: {r.code: r for r in p.spec.override_reasons} for p in packs}
