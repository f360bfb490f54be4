"""Alerts as FHIR R4 DetectedIssue: validated with ``fhir.resources.R4B``, one resource per alert.

What must hold (issue #22): severity critical→high, warning→moderate, info→low; code = rule id in the
pack's system; the order contained (a draft id dangles after signing) or, when it is not a valid
MedicationRequest, an identifier + display; mitigation only from accepted suggestions or mapped
override reasons; every alert of the shipped fixtures maps to a valid resource.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fhir.resources.R4B.detectedissue import DetectedIssue

from cds_engine.alerts import Alert
from cds_engine.detected_issue import ACT_CODE_SYSTEM, IssueContext, Mitigation, detected_issue, dumps
from cds_engine.engine import Engine
from cds_engine.rules.schema import OverrideReason

ROOT = Path(__file__).resolve().parent.parent
WHEN = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)

ORDER = {
    "resourceType": "MedicationRequest",
    "id": "draft-1",
    "status": "draft",
    "intent": "order",
    "subject": {"reference": "Patient/p1"},
    "contained": [{"resourceType": "Medication", "id": "med1",
                   "code": {"text": "Baclofen 10 mg oral tablet"}}],
    "medicationReference": {"reference": "#med1"},
    "dosageInstruction": [{"text": "10 mg three times daily"}],
}


def _alerts(engine: Engine) -> list[Alert]:
    alerts: list[Alert] = []
    for path in sorted((ROOT / "fixtures" / "baclofen").glob("*.json"))[:80]:
        facts = json.loads(path.read_text())["facts"]
        alerts.extend(engine.evaluate(facts))
    return alerts


@pytest.fixture(scope="module")
def fixture_alerts(engine: Engine) -> list[Alert]:
    alerts = _alerts(engine)
    assert {a.severity for a in alerts} == {"info", "warning", "critical"}
    return alerts


def _validate(issue: dict) -> DetectedIssue:
    return DetectedIssue.model_validate(issue)


def test_every_fixture_alert_is_a_valid_detected_issue(fixture_alerts: list[Alert]) -> None:
    expected = {"critical": "high", "warning": "moderate", "info": "low"}
    for alert in fixture_alerts:
        issue = detected_issue(alert, IssueContext(patient_ref="Patient/p1", identified=WHEN, alert_id="a-1"))
        resource = _validate(issue)
        assert resource.severity == expected[alert.severity]
        coding = resource.code.coding[0]
        assert coding.code == alert.rule_id
        assert coding.system == "https://cds-engine.org/packs/baclofen/rules"
        assert resource.status == "final"
        assert resource.patient.reference == "Patient/p1"
        assert not issue.get("mitigation"), "nothing happened, so no mitigation"
        tier = next(e for e in issue["extension"] if e["url"].endswith("/rule-tier"))
        assert tier["valueString"] == alert.tier_id
        pack = next(e for e in issue["extension"] if e["url"].endswith("/pack"))
        assert alert.pack_hash in pack["valueString"]


def test_the_order_is_contained_and_its_contained_resources_flattened(fixture_alerts: list[Alert]) -> None:
    issue = detected_issue(fixture_alerts[0], IssueContext(
        patient_ref="Patient/p1", identified=WHEN, order=ORDER, order_label="Baclofen 10 mg tablet"))
    resource = _validate(issue)
    ids = [c["id"] for c in issue["contained"]]
    assert ids == ["order", "med1"]
    assert "contained" not in issue["contained"][0], "FHIR forbids nested contained resources"
    assert resource.implicated[0].reference == "#order"
    assert resource.implicated[0].display == "Baclofen 10 mg tablet"
    assert ORDER["id"] == "draft-1" and "contained" in ORDER, "the caller's order is not changed"


def test_an_order_that_is_not_a_valid_medication_request_becomes_identifier_and_display(
        fixture_alerts: list[Alert]) -> None:
    broken = {"resourceType": "MedicationRequest", "id": "x", "dosageInstruction": "not a list"}
    issue = detected_issue(fixture_alerts[0], IssueContext(
        patient_ref="Patient/p1", identified=WHEN, order=broken, order_label="Baclofen (as written)",
        order_key="issuer|Patient/p1|enc|x"))
    resource = _validate(issue)
    assert "contained" not in issue
    assert resource.implicated[0].display == "Baclofen (as written)"
    assert resource.implicated[0].identifier.value == "issuer|Patient/p1|enc|x"


def test_mitigation_from_an_override_reason_names_the_management_code(fixture_alerts: list[Alert]) -> None:
    issue = detected_issue(fixture_alerts[0], IssueContext(
        patient_ref="Patient/p1", identified=WHEN, status="preliminary",
        mitigations=[Mitigation(text="Specialist supervision in place", code="9", date=WHEN),
                     Mitigation(text="Accepted: reduce to 5 mg three times daily")]))
    resource = _validate(issue)
    assert resource.status == "preliminary"
    first, second = resource.mitigation
    assert first.action.coding[0].system == ACT_CODE_SYSTEM and first.action.coding[0].code == "9"
    assert not second.action.coding and second.action.text.startswith("Accepted")


def test_the_pack_maps_override_reasons_to_known_management_codes(engine: Engine) -> None:
    for pack in engine.packs:
        mapped = [r for r in pack.spec.override_reasons if r.management_code]
        assert mapped, f"{pack.id}: no override reason maps to a mitigation"
        unmapped = {r.code for r in pack.spec.override_reasons if not r.management_code}
        assert {"data-incorrect", "not-applicable"} <= unmapped, "'the alert is wrong' is no mitigation"
    with pytest.raises(ValueError, match="ActDetectedIssueManagementCode"):
        OverrideReason(code="x", display="X", management_code="99")


def test_ndjson_is_one_resource_per_line(fixture_alerts: list[Alert]) -> None:
    ctx = IssueContext(patient_ref="Patient/p1", identified=WHEN)
    lines = list(dumps(detected_issue(a, ctx) for a in fixture_alerts[:5]))
    assert len(lines) == 5 and all(line.endswith("\n") and "\n" not in line[:-1] for line in lines)
    assert len({json.loads(line)["id"] for line in lines}) == 5, "distinct alerts get distinct ids"


def test_screen_writes_one_valid_detected_issue_per_alert_row(tmp_path: Path) -> None:
    import stat

    import polars as pl

    from cds_engine.batch.runner import ScreenOptions, run_screen

    table = tmp_path / "current-therapy.csv"  # real therapy: each patient's current order, no assumed one
    table.write_text(
        "patient_id,birth_date,egfr,egfr_date,order_product,order_form,order_route,order_dose_amount,"
        "order_dose_unit,order_doses_per_day,order_action\n"
        "a,1950-01-01,20,2026-01-10,baclofen,tablet,oral,20,mg,4,continue\n"
        "b,1980-01-01,45,2025-12-01,baclofen,tablet,oral,10,mg,3,continue\n"
        "c,1990-05-05,90,2026-01-02,,,,,,,\n", encoding="utf-8")
    out = tmp_path / "out"
    result = run_screen(ScreenOptions(inputs=[table], out=out, rules=ROOT / "rules",
                                      as_of="2026-01-15", formats=("parquet", "fhir-ndjson")))
    assert result.exit_code in (0, 1)
    alerts = pl.read_parquet(out / "alerts.parquet")
    lines = (out / "detected-issues.ndjson").read_text(encoding="utf-8").splitlines()
    assert alerts.height > 0 and len(lines) == alerts.height
    assert stat.S_IMODE((out / "detected-issues.ndjson").stat().st_mode) == 0o600
    issues = [json.loads(line) for line in lines]
    for issue in issues:
        DetectedIssue.model_validate(issue)
        assert issue["patient"]["reference"].startswith("Patient/")
        assert issue["status"] == "final" and "mitigation" not in issue
    assert sorted(i["code"]["coding"][0]["code"] for i in issues) == sorted(alerts["rule_id"].to_list())
    assert len({i["id"] for i in issues}) == len(issues)
