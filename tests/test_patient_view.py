"""patient-view monitoring and alert-fatigue controls through the real ``serve`` (issue 21).

A real uvicorn process (``serve``), a real SQLite file and — when ``CDS_TEST_DATABASE_URL`` is set
— a real PostgreSQL database; the EHR's FHIR server is a real HTTP server thread on loopback that
records every request, so "no outbound call" is observed, not assumed.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from tests.service_helpers import (
    REPO,
    LocalFhir,
    baclofen_concept,
    hook_request,
    medication_request,
    serve_process,
)
from tests.store_helpers import postgres_database
from tests.test_faults_fhir import FhirServer

from cds_engine.rules.schema import Pack
from cds_engine.service.discovery import patient_view_templates

CLOCK = "2025-03-01T10:00:00+00:00"
VIEW = "/cds-services/baclofen-patient-view"


def record(egfr: float = 40, egfr_date: str = "2024-10-01", on_drug: bool = True) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01", "gender": "female"},
        {
            "resourceType": "Observation", "id": "o1", "status": "final",
            "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "98979-8"}]},
            "effectiveDateTime": egfr_date,
            "valueQuantity": {"value": egfr, "unit": "mL/min/{1.73_m2}"},
        },
    ]
    if on_drug:
        out.append(medication_request(id="act-1", status="active", dose=20, per_day=3,
                                      authoredOn="2024-01-01"))
    return out


def inpatient_on_home_baclofen() -> list[dict[str, Any]]:
    """Home baclofen recorded as a MedicationStatement; admitted 3 days ago; no inpatient order."""
    dosage = {"route": {"text": "oral"}, "doseAndRate": [{"doseQuantity": {"value": 10, "unit": "mg"}}],
              "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}}}
    return [
        *record(on_drug=False),
        {"resourceType": "MedicationStatement", "id": "ms1", "status": "active",
         "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": baclofen_concept(),
         "effectivePeriod": {"start": "2023-01-01"}, "dosage": [dosage]},
        {"resourceType": "Encounter", "id": "e1", "status": "in-progress",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
         "subject": {"reference": "Patient/p1"}, "period": {"start": "2025-02-26T08:00:00Z"}},
    ]


def view_request(resources: list[dict[str, Any]], *, fhir: str | None = None, encounter: str | None = "e1",
                 user: str = "Practitioner/doc") -> dict[str, Any]:
    context: dict[str, Any] = {"userId": user, "patientId": "p1"}
    if encounter:
        context["encounterId"] = encounter
    body: dict[str, Any] = {
        "hook": "patient-view", "hookInstance": str(uuid.uuid4()), "context": context,
        "prefetch": LocalFhir(resources).prefetch(patient_view_templates(), {"patientId": "p1"}),
    }
    if fhir:
        body["fhirServer"] = fhir
        body["fhirAuthorization"] = {"access_token": "t", "token_type": "Bearer", "expires_in": 300,
                                     "scope": "patient/*.read", "subject": "cds-engine"}
    return body


def rules_with_suppression(directory: Path, window: int = 60) -> Path:
    """A copy of rules/ where BAC-R04.beers is suppressible and the site opens a window."""
    rules = directory / "rules"
    shutil.copytree(REPO / "rules", rules)
    pack = rules / "baclofen" / "pack.yaml"
    text_ = pack.read_text()
    marker = "      - id: BAC-R04.beers\n        severity: warning\n"
    assert marker in text_
    pack.write_text(text_.replace(marker, marker + "        suppressible: true\n"))
    (rules / "site.yaml").write_text(
        f"site: {{name: Test site}}\npacks:\n  baclofen:\n    suppress_window_minutes: {window}\n"
    )
    return rules


class Fhir:
    """The EHR's FHIR server over real HTTP, counting the requests it receives."""

    def __init__(self, resources: list[dict[str, Any]]) -> None:
        self.paths: list[str] = []
        self.server = FhirServer(LocalFhir(resources), self._seen)

    def _seen(self, path: str) -> float:
        self.paths.append(path)
        return 0.0

    def close(self) -> None:
        self.server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(base URL, database URL) of a real ``serve`` with the suppressible test rules."""
    if request.param == "sqlite":
        contexts: Any = iter([f"sqlite:///{tmp_path / 'cds.db'}"])
        db = next(contexts)
        cleanup = None
    else:
        cleanup = postgres_database()
        db = cleanup.__enter__()
    try:
        rules = rules_with_suppression(tmp_path)
        with serve_process(serve_args(db, rules), tmp_path) as (base, _process, log_path):
            yield base, db
        assert "Traceback" not in log_path.read_text()
    finally:
        if cleanup is not None:
            cleanup.__exit__(None, None, None)


def serve_args(db: str, rules: Path) -> list[str]:
    return ["--no-auth", "--db", db, "--rules", str(rules), "--allow-loopback-fhir", "--fixed-clock", CLOCK]


def view(base: str, resources: list[dict[str, Any]], **options: Any) -> list[str]:
    """Open the chart: the rule ids of the cards shown."""
    return codes(httpx.post(f"{base}{VIEW}", json=view_request(resources, **options), timeout=30))


def codes(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [c["source"]["topic"]["code"] for c in response.json()["cards"]]


def rows(db: str, sql: str) -> list[Any]:
    engine = create_engine(db.replace("postgresql+psycopg", "postgresql+psycopg"))
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)))
    finally:
        engine.dispose()


def test_patient_view_through_the_real_serve(served: tuple[str, str]) -> None:
    base, db = served
    services = {s["id"]: s for s in httpx.get(f"{base}/cds-services").json()["services"]}
    assert set(services["baclofen-patient-view"]["prefetch"]) == {
        "activeMedicationRequests", "activeMedicationStatements"}
    fhir = Fhir(record())
    try:
        # not on the drug: no outbound call at all, no card, nothing stored
        off = Fhir(record(on_drug=False))
        try:
            assert view(base, record(on_drug=False), fhir=off.server.base) == []
            assert off.paths == []
        finally:
            off.close()
        # a portal user: 200, no cards, counted
        portal = view_request(record(), fhir=fhir.server.base, user="RelatedPerson/r1")
        assert codes(httpx.post(f"{base}{VIEW}", json=portal, timeout=30)) == []
        assert fhir.paths == []
        health = httpx.get(f"{base}/healthz").json()
        assert health["patient_view_total"]["portal-user"] >= 1
        assert health["patient_view_total"]["not-on-drug"] >= 1

        # on the drug, no fhirServer: one info card per encounter saying monitoring was not checked
        assert view(base, record()) == ["monitoring-unchecked"]
        assert view(base, record()) == []
        assert view(base, record(), encounter="e2") == ["monitoring-unchecked"]
        # medicines neither prefetched nor readable (no fhirServer): unknown is not "not on the drug"
        blind = view_request(record(), encounter="e9")
        blind["prefetch"] = {}
        assert codes(httpx.post(f"{base}{VIEW}", json=blind, timeout=30)) == ["monitoring-unchecked"]
        blind["hookInstance"] = str(uuid.uuid4())
        assert codes(httpx.post(f"{base}{VIEW}", json=blind, timeout=30)) == [], "once per encounter"

        # on the drug, with fhirServer: the rest of the record is read, patient-view rules answer
        shown = view(base, record(), fhir=fhir.server.base, encounter="e3")
        assert fhir.paths, "the record is read through fhirServer only for a patient on the drug"
        assert {"BAC-R01", "BAC-R04", "BAC-M02"} <= set(shown)  # band for current therapy, renal re-check
        assert not {"BAC-D01", "BAC-R00"} & set(shown)  # order-only rules do not run at chart open
        # the same chart again in the same encounter: not shown twice
        again = view(base, record(), fhir=fhir.server.base, encounter="e3")
        assert "BAC-R01" not in again and "BAC-R04" not in again
    finally:
        fhir.close()
    # evidence changed (a new eGFR in another band): shown again in the same encounter
    changed = Fhir(record(egfr=25))
    try:
        shown = view(base, record(egfr=25), fhir=changed.server.base, encounter="e3")
        assert "BAC-R02" in shown  # critical: always shown
        assert "BAC-R04" in shown  # its facts changed
    finally:
        changed.close()
    # home baclofen as a MedicationStatement only, in hospital for 3 days without it: W03
    home = Fhir(inpatient_on_home_baclofen())
    try:
        assert "BAC-W03" in view(base, inpatient_on_home_baclofen(), fhir=home.server.base, encounter="e1")
        assert "BAC-W03" in view(base, inpatient_on_home_baclofen(), fhir=home.server.base, encounter="e1")
    finally:
        home.close()
    stored = rows(db, "SELECT DISTINCT source FROM evaluations")
    assert ("patient-view",) in stored
    hidden = rows(db, "SELECT a.rule_id FROM alerts a JOIN evaluations e ON e.id = a.evaluation_id "
                      "WHERE e.source = 'patient-view' AND a.shown = false")
    assert ("BAC-R01",) in hidden  # evaluated and stored, not shown


def _order(base: str, hook: str, fhir: Fhir, dose: float = 5) -> httpx.Response:
    draft = medication_request(id="new-1", dose=dose, per_day=2)  # low start: BAC-R04.beers, not .high_start
    body = hook_request(hook, "p1", [draft], fhir_server=fhir.server.base, encounter="e9")
    return httpx.post(f"{base}/cds-services/baclofen-{hook}", json=body, timeout=30)


def _override(base: str, hook: str, card: dict[str, Any], code: str | None = None) -> None:
    offered = card["overrideReasons"][0]
    reason = {"code": code or offered["code"], "system": offered["system"]}
    body = {"feedback": [{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": CLOCK,
                          "overrideReason": {"reason": reason}}]}
    response = httpx.post(f"{base}/cds-services/baclofen-{hook}/feedback", json=body, timeout=30)
    assert response.status_code == 200, response.text


def _card(response: httpx.Response, rule: str) -> dict[str, Any] | None:
    assert response.status_code == 200, response.text
    return next((c for c in response.json()["cards"] if c["source"]["topic"]["code"] == rule), None)


def test_repeat_suppression_both_orders_of_feedback(served: tuple[str, str], tmp_path: Path) -> None:
    base, db = served
    fhir = Fhir(record(on_drug=False))
    try:
        # shown is not overridden: nothing is suppressed
        selected = _card(_order(base, "order-select", fhir), "BAC-R04")
        assert selected is not None
        signed = _card(_order(base, "order-sign", fhir), "BAC-R04")
        assert signed is not None
        # feedback arriving after order-sign (on the sign card) starts the window: next call suppressed
        _override(base, "order-sign", signed)
        assert _card(_order(base, "order-select", fhir), "BAC-R04") is None
        # only the suppressible tier is kept back: the other cards of the same order still show
        assert _card(_order(base, "order-sign", fhir), "BAC-R01") is not None
    finally:
        fhir.close()
    # new evidence (another eGFR band) is a new hash: shown again, and feedback before sign suppresses it
    changed = Fhir(record(egfr=35, on_drug=False))
    try:
        card = _card(_order(base, "order-select", changed), "BAC-R04")
        assert card is not None
        _override(base, "order-select", card, code="not-a-reason-of-this-card")
        assert _card(_order(base, "order-sign", changed), "BAC-R04") is not None  # reason not offered
        card = _card(_order(base, "order-select", changed), "BAC-R04")
        assert card is not None
        _override(base, "order-select", card)
        assert _card(_order(base, "order-sign", changed), "BAC-R04") is None
    finally:
        changed.close()
    why = rows(db, "SELECT suppressed_by FROM fatigue_cards WHERE suppressed_by IS NOT NULL")
    assert why and all(w[0].startswith("not shown — suppressed by override") for w in why)
    hidden = rows(db, "SELECT count(*) FROM alerts WHERE rule_id = 'BAC-R04' AND shown = false")
    assert hidden[0][0] >= 2
    # analytics count shown and suppressed apart (suppressed is not "silent mode")
    from cds_engine.store import open_store
    from cds_engine.store.queries import alert_detail
    from cds_engine.store.rule_stats import rule_stats

    store = open_store(db, spool_dir=tmp_path / "analytics-spool", start_drainer=False)
    try:
        with store.session() as session:
            stats = {s.rule_id: s for s in rule_stats(session, [])}
            kept_id = rows(db, "SELECT id FROM alerts WHERE rule_id = 'BAC-R04' AND shown = false")[0][0]
            detail = alert_detail(session, kept_id)  # the review page says why it was not shown
            assert detail is not None and (detail.kept_back or "").startswith("not shown — suppressed by")
    finally:
        store.close()
    assert stats["BAC-R04"].suppressed == hidden[0][0]
    assert stats["BAC-R04"].silent == 0 and stats["BAC-R01"].suppressed == 0


def test_window_zero_never_suppresses(tmp_path: Path) -> None:
    rules = rules_with_suppression(tmp_path, window=0)
    db = f"sqlite:///{tmp_path / 'cds.db'}"
    fhir = Fhir(record(on_drug=False))
    try:
        with serve_process(serve_args(db, rules), tmp_path) as (base, _process, _log):
            card = _card(_order(base, "order-select", fhir), "BAC-R04")
            assert card is not None
            _override(base, "order-select", card)
            assert _card(_order(base, "order-sign", fhir), "BAC-R04") is not None
    finally:
        fhir.close()


@pytest.mark.parametrize(("rule", "tier"), [("BAC-R02", "BAC-R02.avoid"), ("BAC-W03", "BAC-W03.interrupted"),
                                            ("BAC-A01", "BAC-A01.excipient"), ("BAC-F01", None)])
def test_schema_refuses_suppressible_where_it_could_hide_a_danger(rule: str, tier: str | None) -> None:
    import yaml

    data = yaml.safe_load((REPO / "rules" / "baclofen" / "pack.yaml").read_text())
    spec = next(r for r in data["rules"] if r["id"] == rule)
    target = next(t for t in spec["tiers"] if tier is None or t["id"] == tier)
    target["suppressible"] = True
    with pytest.raises(ValueError, match="cannot be suppressible"):
        Pack.model_validate(data)


def test_shipped_pack_declares_no_suppressible_tier_and_patient_view_rules() -> None:
    import yaml

    data = Pack.model_validate(yaml.safe_load((REPO / "rules" / "baclofen" / "pack.yaml").read_text()))
    assert not any(t.suppressible for r in data.rules for t in r.tiers)
    on_view = {r.id for r in data.rules if "patient-view" in r.hooks}
    assert {"BAC-M01", "BAC-M02", "BAC-M03", "BAC-W02", "BAC-W03", "BAC-R01", "BAC-C01"} <= on_view
    assert data.parameters["suppress_window_minutes"].value == 0


@pytest.fixture(params=["sqlite", "postgresql"])
def fatigue_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    from cds_engine.store import open_store
    from cds_engine.store.fatigue import FatigueStore

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'f.db'}"
        store = open_store(url, spool_dir=tmp_path / "spool", start_drainer=False)
        yield FatigueStore(store.engine)
        store.close()
        return
    with postgres_database() as url:
        store = open_store(url, spool_dir=tmp_path / "spool", start_drainer=False)
        yield FatigueStore(store.engine)
        store.close()


def test_only_the_same_issuer_and_tenant_with_an_offered_reason_starts_a_window(fatigue_store: Any) -> None:
    from datetime import datetime, timedelta

    from cds_engine.service.fatigue import client_key

    now = datetime.fromisoformat(CLOCK)
    ours, theirs = client_key("https://ehr.example", "t1"), client_key("https://ehr.example", "t2")
    fatigue_store.remember_cards([{"card_uuid": "c1", "pack_id": "baclofen", "tier_id": "BAC-R04.beers",
                                   "suppress_key": "k1", "client_key": ours,
                                   "override_reasons": ["tolerated-before"], "suppressed_by": None}], now)
    assert fatigue_store.start_window("c1", "tolerated-before", theirs, now) == "other-issuer"
    assert fatigue_store.start_window("c1", "made-up", ours, now) == "reason-not-offered"
    assert fatigue_store.start_window("unknown", "tolerated-before", ours, now) == "not-suppressible"
    assert fatigue_store.suppressing("k1", now, 60) is None  # none of those started anything
    assert fatigue_store.start_window("c1", "tolerated-before", ours, now) == "started"
    assert fatigue_store.suppressing("k1", now + timedelta(minutes=59), 60) is not None
    assert fatigue_store.suppressing("k1", now + timedelta(minutes=61), 60) is None  # the window closed
    assert fatigue_store.suppressing("k1", now, 0) is None  # 0 = off
    # shown once: the first insert wins, a second ask is "already shown", other facts show again
    assert fatigue_store.first_display("scope", "BAC-M02.recheck", "h1", now) is True
    assert fatigue_store.first_display("scope", "BAC-M02.recheck", "h1", now) is False
    assert fatigue_store.first_display("scope", "BAC-M02.recheck", "h2", now) is True


def test_hooks_declared_per_rule_and_per_tier_decide_where_an_alert_is_answered() -> None:
    from types import SimpleNamespace

    import yaml
    from tests.store_helpers import make_alert

    from cds_engine.service.hook_scope import offers_hook, runs_on

    data = yaml.safe_load((REPO / "rules" / "baclofen" / "pack.yaml").read_text())
    rules = {r["id"]: r for r in data["rules"]}
    rules["BAC-M02"]["hooks"] = ["patient-view"]  # chart open only
    beers = next(t for t in rules["BAC-R04"]["tiers"] if t["id"] == "BAC-R04.beers")
    beers["hooks"] = ["order-sign"]  # a tier's own hooks replace its rule's
    pack: Any = SimpleNamespace(spec=Pack.model_validate(data))

    def alert(tier: str, **update: Any) -> Any:
        return make_alert(tier.split(".")[0]).model_copy(update={"tier_id": tier, **update})

    assert not runs_on(pack, alert("BAC-M02.recheck"), "order-sign")
    assert runs_on(pack, alert("BAC-M02.recheck"), "patient-view")
    assert runs_on(pack, alert("BAC-R04.beers"), "order-sign")
    assert not runs_on(pack, alert("BAC-R04.beers"), "order-select")
    assert not runs_on(pack, alert("BAC-R04.beers"), "patient-view")
    assert runs_on(pack, alert("BAC-R04.high_start"), "patient-view")  # the rule's hooks
    assert runs_on(pack, alert("BAC-D01.max"), "order-sign")  # default: the order hooks
    assert not runs_on(pack, alert("BAC-D01.max"), "patient-view")
    # a cannot-assess report: answered where one of the checks it names runs (none named: always)
    gap = {"kind": "cannot-assess", "rule_id": "missing-data", "tier_id": "missing-data.egfr"}
    assert not runs_on(pack, alert("missing-data.egfr", **gap, not_assessed=["BAC-M02"]), "order-sign")
    assert runs_on(pack, alert("missing-data.egfr", **gap, not_assessed=["BAC-M02", "BAC-R01"]), "order-sign")
    assert runs_on(pack, alert("missing-data.egfr", **gap, not_assessed=[]), "patient-view")
    assert offers_hook(pack, "patient-view")
