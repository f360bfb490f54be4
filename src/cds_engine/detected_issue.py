"""Alerts as FHIR R4 ``DetectedIssue`` resources, for hospitals that load CDS findings into their FHIR server.

One alert → one DetectedIssue. The mapping is fixed here; everything clinical comes from the alert
(which came from the pack):

- ``code``: the rule id in the pack's own code system (``<pack url>/rules``), the rule title as display;
- ``severity``: critical → high, warning → moderate, info → low;
- ``implicated``: the order as a *contained* MedicationRequest — a draft id dangles once the order
  is signed, so a reference to it would point nowhere — or, when the order cannot be carried as a
  valid resource, an identifier + display (the order sentence);
- ``evidence``: one entry per fact value the rule read (label, value, unit/date where known);
- ``mitigation``: only what actually happened — an accepted suggestion, or an override reason that
  the pack maps to an ``ActDetectedIssueManagementCode`` (``override_reasons[].management_code``).
  Nothing is invented for cards nobody acted on.

Suppressed cards (evaluated, not shown) may be exported with status ``preliminary``; shown cards are
``final``. Hypothetical screenings are never turned into DetectedIssues — callers refuse them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from cds_engine.alerts import Alert
from cds_engine.rules.schema import MANAGEMENT_CODES

__all__ = [
    "ACT_CODE_SYSTEM",
    "SEVERITY",
    "IssueContext",
    "Mitigation",
    "detected_issue",
    "dumps",
]

SEVERITY: dict[str, str] = {"critical": "high", "warning": "moderate", "info": "low"}
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_IDENTIFIER_SYSTEM = "urn:cds-engine:alert"
_ORDER_SYSTEM = "urn:cds-engine:order"
_EXT_BASE = "https://cds-engine.org/fhir/StructureDefinition"
_MAX_DETAIL = 8000
_MAX_EVIDENCE = 40


@dataclass(frozen=True)
class Mitigation:
    """Something that happened in response to the card: an accepted suggestion or a mapped override."""

    text: str
    code: str | None = None            # an ActDetectedIssueManagementCode, when the pack maps one
    date: datetime | None = None


@dataclass(frozen=True)
class IssueContext:
    """What the alert alone does not say: whose issue, when, about which order, what happened."""

    patient_ref: str | None
    identified: datetime
    alert_id: str | None = None
    order: Mapping[str, Any] | None = None       # the FHIR MedicationRequest as sent, when there was one
    order_label: str | None = None               # the order as one sentence
    order_key: str | None = None
    status: Literal["final", "preliminary"] = "final"
    mitigations: Sequence[Mitigation] = field(default_factory=tuple)
    # evidence as "label: value" lines worded for people (the review page's wording); None: fact names
    evidence_lines: Sequence[str] | None = None


def _reference(ref: str | None) -> dict[str, Any] | None:
    if not ref:
        return None
    return {"reference": ref} if "/" in ref else {"display": ref}


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple | set):
        return ", ".join(_scalar(v) for v in list(value)[:10])
    if isinstance(value, Mapping):
        inner = {k: v for k, v in value.items() if v is not None}
        if "value" in inner:
            text = _scalar(inner["value"])
            if inner.get("unit"):
                text += f" {inner['unit']}"
            if inner.get("date"):
                text += f" ({inner['date']})"
            return text
        return "; ".join(f"{k} {_scalar(v)}" for k, v in list(inner.items())[:10])
    return str(value)


def _evidence(alert: Alert, lines: Sequence[str] | None) -> list[dict[str, Any]]:
    if lines is None:
        lines = [f"{name.replace('_', ' ')}: {_scalar(value)}" for name, value in alert.evidence.items()
                 if value is not None]
    texts = list(lines)[:_MAX_EVIDENCE]
    texts += [f"{name.replace('_', ' ')}: not available" for name in alert.missing[:_MAX_EVIDENCE]]
    return [{"detail": [{"display": text[:500]}]} for text in texts]


def _valid_medication_request(order: Mapping[str, Any]) -> bool:
    """Carry the order only if it is a valid R4 MedicationRequest contained (else identifier + display)."""
    try:
        from fhir.resources.R4B.medicationrequest import MedicationRequest

        MedicationRequest.model_validate(order)
    except Exception:
        return False
    return True


def _contain_order(order: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str] | None:
    """The order and its own contained resources, flattened (FHIR forbids nested ``contained``)."""
    if order.get("resourceType") != "MedicationRequest":
        return None
    body = json.loads(json.dumps(order, default=str))  # a private deep copy of plain JSON
    inner = body.pop("contained", None) or []
    body["id"] = "order"
    body.pop("meta", None)
    if not _valid_medication_request(body):
        return None
    resources = [body]
    for resource in inner if isinstance(inner, list) else []:
        if isinstance(resource, dict) and resource.get("id") and resource.get("id") != "order":
            resource.pop("contained", None)
            resources.append(resource)
    return resources, "#order"


def _implicated(ctx: IssueContext) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(contained resources, implicated references)."""
    if ctx.order:
        contained = _contain_order(ctx.order)
        if contained is not None:
            resources, ref = contained
            display = ctx.order_label
            return resources, [{"reference": ref, **({"display": display[:500]} if display else {})}]
    if ctx.order_label or ctx.order_key:
        ref: dict[str, Any] = {"type": "MedicationRequest"}
        if ctx.order_key:
            ref["identifier"] = {"system": _ORDER_SYSTEM, "value": ctx.order_key[:256]}
        if ctx.order_label:
            ref["display"] = ctx.order_label[:500]
        return [], [ref]
    return [], []


def _mitigation(m: Mitigation) -> dict[str, Any]:
    action: dict[str, Any] = {"text": m.text[:500]}
    if m.code in MANAGEMENT_CODES:
        action["coding"] = [{"system": ACT_CODE_SYSTEM, "code": m.code, "display": MANAGEMENT_CODES[m.code]}]
    out: dict[str, Any] = {"action": action}
    if m.date is not None:
        out["date"] = m.date.isoformat()
    return out


def _issue_id(alert: Alert, ctx: IssueContext) -> str:
    """Stable across exports of the same alert, so a FHIR server can upsert instead of duplicating."""
    basis = ctx.alert_id or f"{ctx.patient_ref}|{ctx.order_key}|{alert.tier_id}|{ctx.identified.isoformat()}"
    return hashlib.sha256(basis.encode()).hexdigest()[:40]


def detected_issue(alert: Alert, ctx: IssueContext) -> dict[str, Any]:
    """One alert as a FHIR R4 DetectedIssue (plain JSON dict, ready for NDJSON)."""
    system = (f"{alert.pack_url.rstrip('/')}/rules" if alert.pack_url
              else f"urn:cds-engine:pack:{alert.pack_id}")
    contained, implicated = _implicated(ctx)
    detail = alert.summary if not alert.detail else f"{alert.summary}\n\n{alert.detail}"
    issue: dict[str, Any] = {
        "resourceType": "DetectedIssue",
        "id": _issue_id(alert, ctx),
        "extension": [
            {"url": f"{_EXT_BASE}/rule-tier", "valueString": alert.tier_id},
            {"url": f"{_EXT_BASE}/pack",
             "valueString": f"{alert.pack_id} {alert.pack_version} {alert.pack_hash}"},
            {"url": f"{_EXT_BASE}/finding-kind", "valueCode": alert.kind},
        ],
        "identifier": [{"system": _IDENTIFIER_SYSTEM, "value": ctx.alert_id or _issue_id(alert, ctx)}],
        "status": ctx.status,
        "code": {"coding": [{"system": system, "code": alert.rule_id, "display": alert.title[:200]}],
                 "text": alert.title[:200]},
        "severity": SEVERITY[alert.severity],
        "identifiedDateTime": ctx.identified.isoformat(),
        "author": {"display": f"cds-engine {alert.pack_id} pack {alert.pack_version}"},
        "detail": detail[:_MAX_DETAIL],
    }
    if contained:
        issue["contained"] = contained
    patient = _reference(ctx.patient_ref)
    if patient:
        issue["patient"] = patient
    if implicated:
        issue["implicated"] = implicated
    evidence = _evidence(alert, ctx.evidence_lines)
    if evidence:
        issue["evidence"] = evidence
    urls = [s.url for s in alert.sources if s.url]
    if urls:
        issue["reference"] = urls[0]
    if ctx.mitigations:
        issue["mitigation"] = [_mitigation(m) for m in ctx.mitigations]
    return issue


def dumps(issues: Iterable[Mapping[str, Any]]) -> Iterable[str]:
    """NDJSON lines (one resource per line, no spaces), the Bulk Data format."""
    for issue in issues:
        yield json.dumps(issue, separators=(",", ":"), ensure_ascii=False) + "\n"
