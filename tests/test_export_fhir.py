"""``cds-engine export --format fhir-ndjson`` (issue #22): shown cards of real events as DetectedIssue.

Through the real command (a subprocess) on SQLite and PostgreSQL: hook and real screening alerts are
exported, hypothetical screenings never, suppressed cards only when asked (preliminary); a mapped
override reason becomes a coded mitigation; the file is 0600; every export is audited.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fhir.resources.R4B.detectedissue import DetectedIssue
from sqlalchemy import select

from cds_engine.store import Store, open_store
from cds_engine.store.fatigue import FatigueStore
from cds_engine.store.models import AuditEntry
from conftest import RULES
from store_helpers import NOW, feedback, make_alert, make_record, postgres_database

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/export.db"
    else:
        with postgres_database() as url:
            yield url


def _alert(rule_id: str, severity: str = "warning"):
    return make_alert(rule_id, severity).model_copy(update={"pack_id": "baclofen"})


@pytest.fixture
def store(db_url: str, tmp_path: Path) -> Iterator[Store]:
    s = open_store(db_url, spool_dir=tmp_path / "spool", start_drainer=False)
    hook = make_record(source="hook", patient="Patient/h", order_key="o-h",
                       alerts=[_alert("TST-H01", "critical"), _alert("TST-H02", "info")])
    s.sink.record_evaluation(hook)
    s.sink.record_feedback(feedback(hook.alerts[0].card_uuid or "", "overridden"))  # tolerated-before → 23
    s.sink.record_evaluation(make_record(source="batch", patient="Patient/b", order_key=None,
                                         alerts=[_alert("TST-B01")]))
    hypo = make_record(source="batch", patient="Patient/x", order_key="o-x", alerts=[_alert("TST-X01")])
    s.sink.record_evaluation(hypo.model_copy(update={"hypothetical": True}))
    suppressed = make_record(source="hook", patient="Patient/s", order_key="o-s", alerts=[_alert("TST-S01")])
    suppressed.alerts[0] = suppressed.alerts[0].model_copy(update={"shown": False})
    s.sink.record_evaluation(suppressed)
    FatigueStore(s.engine).remember_cards([{
        "card_uuid": suppressed.alerts[0].card_uuid, "pack_id": "baclofen", "tier_id": "TST-S01.main",
        "suppress_key": "k", "client_key": "c", "override_reasons": [],
        "suppressed_by": "override (tolerated-before) at 2025-03-01T09:00:00+00:00"}], NOW)
    silent = make_record(source="hook", patient="Patient/d", order_key="o-d", alerts=[_alert("TST-D01")])
    silent.alerts[0] = silent.alerts[0].model_copy(update={"shown": False})  # a draft pack's silent alert
    s.sink.record_evaluation(silent)
    old = make_record(source="hook", patient="Patient/o", as_of=NOW - timedelta(days=40),
                      alerts=[_alert("TST-O01")])
    s.sink.record_evaluation(old)
    yield s
    s.close()


def _export(db_url: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    since = (NOW - timedelta(days=1)).date().isoformat()
    return subprocess.run(
        [sys.executable, "-m", "cds_engine.cli", "export", "--since", since, "--out", str(out),
         "--db", db_url, "--rules", str(RULES), *extra],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "CDS_DATABASE_URL": ""},
    )


def _issues(path: Path) -> dict[str, dict]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        issue = json.loads(line)
        DetectedIssue.model_validate(issue)
        out[issue["code"]["coding"][0]["code"]] = issue
    return out


def test_export_writes_real_shown_findings_only(store: Store, db_url: str, tmp_path: Path) -> None:
    out = tmp_path / "issues.ndjson"
    done = _export(db_url, out)
    assert done.returncode == 0, done.stderr
    issues = _issues(out)
    assert set(issues) == {"TST-H01", "TST-H02", "TST-B01"}, "no hypothetical, suppressed or older alert"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    critical = issues["TST-H01"]
    assert critical["severity"] == "high" and critical["status"] == "final"
    assert critical["patient"] == {"reference": "Patient/h"}
    [mitigation] = critical["mitigation"]
    assert mitigation["action"]["coding"][0]["code"] == "23"
    assert "tolerated" in mitigation["action"]["text"].lower()
    assert "mitigation" not in issues["TST-H02"], "no feedback, no mitigation"
    assert issues["TST-H02"]["severity"] == "low"
    # the stored order ({"resourceType": "MedicationRequest", "id": ...}) is no valid MedicationRequest:
    # it is named by its order key rather than carried
    identifier = critical["implicated"][0]["identifier"]
    assert identifier["system"] == "urn:cds-engine:order" and identifier["value"]
    assert "contained" not in critical
    with store.session() as db:
        entry = db.scalars(select(AuditEntry).where(AuditEntry.action == "export.fhir-ndjson")).one()
        assert entry.detail["resources"] == 3 and entry.target_id == out.name
    assert "exported 3 DetectedIssue" in done.stdout


def test_suppressed_cards_only_when_asked_and_preliminary(store: Store, db_url: str, tmp_path: Path) -> None:
    out = tmp_path / "all.ndjson"
    done = _export(db_url, out, "--include-suppressed")
    assert done.returncode == 0, done.stderr
    issues = _issues(out)
    assert issues["TST-S01"]["status"] == "preliminary"
    assert issues["TST-H01"]["status"] == "final"
    assert "TST-X01" not in issues
    assert "TST-D01" not in issues, "a draft pack's silent alert never enters a chart"


def test_usage_errors_exit_2(store: Store, db_url: str, tmp_path: Path) -> None:
    done = _export(db_url, tmp_path / "x.ndjson", "--format", "csv")
    assert done.returncode == 2 and "--format" in done.stderr
    bad = subprocess.run([sys.executable, "-m", "cds_engine.cli", "export", "--since", "yesterday",
                          "--out", str(tmp_path / "y.ndjson"), "--db", db_url],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "--since" in bad.stderr
