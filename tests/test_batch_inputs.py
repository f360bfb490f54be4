"""Bad input: only what cannot be read is rejected (with its reason); odd values are still screened.

Inputs are written by the test (no shared data needed): FHIR bundles (good, corrupt, a
hospital bundle, clinical resources without a patient, a deceased patient), a CSV table
(unparsable value, ragged row, no patient id, no birth date, unknown eGFR unit, deceased)
and a Bulk NDJSON folder (a line that is not JSON, a record without a patient, resources of a
patient who has no Patient record).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from cds_engine.batch.runner import EXIT_REJECTED, EXIT_USAGE, ScreenError, ScreenOptions, run_screen
from cds_engine.cli import app
from conftest import RULES

AS_OF = "2026-01-15T12:00:00+00:00"
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"


def patient_bundle(
    pid: str,
    *,
    birth: str | None = "1950-03-04",
    deceased: bool = False,
    egfr: float | None = 25.0,
    egfr_unit: str = "mL/min/{1.73_m2}",
) -> dict:
    patient = {"resourceType": "Patient", "id": pid, "gender": "female"}
    if birth:
        patient["birthDate"] = birth
    if deceased:
        patient["deceasedDateTime"] = "2020-01-01T00:00:00Z"
    entries = [patient]
    if egfr is not None:
        entries.append(
            {
                "resourceType": "Observation",
                "id": f"{pid}-egfr",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "33914-3"}]},
                "subject": {"reference": f"Patient/{pid}"},
                "effectiveDateTime": "2026-01-02T08:00:00Z",
                "valueQuantity": {"value": egfr, "unit": egfr_unit},
            }
        )
    entries.append(
        {
            "resourceType": "MedicationRequest",
            "id": f"{pid}-mr",
            "status": "active",
            "intent": "order",
            "subject": {"reference": f"Patient/{pid}"},
            "authoredOn": "2025-12-01",
            "medicationCodeableConcept": {
                "coding": [{"system": RX, "code": "1049221", "display": "oxyCODONE 5 MG Oral Tablet"}]
            },
        }
    )
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in entries],
    }


def write_bundle(path: Path, bundle: dict) -> Path:
    data = json.dumps(bundle).encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


CSV_HEADER = "patient_id,birth_date,sex,egfr,egfr_unit,egfr_date,medications,deceased,comment"
CSV_ROWS = [
    "t-ok,1948-05-06,male,22,mL/min/1.73m2,2026-01-05,rxnorm|1049221,false,fine",
    "t-bad-number,1948-05-06,male,abc,,2026-01-05,,false,egfr does not parse",
    "t-ragged,1948-05-06,male",
    ",1970-01-01,female,80,,2026-01-05,,false,no patient id",
    "t-no-birth,,female,45,mL/min,2026-01-05,,false,no birth date",
    "t-odd-unit,1960-01-01,female,1.2,mg/dL,2026-01-05,,false,unit the engine does not know",
    "t-dead,1930-01-01,male,50,,2026-01-05,,true,deceased",
]


@pytest.fixture(scope="module")
def screened(tmp_path_factory) -> tuple[Path, int]:
    root = tmp_path_factory.mktemp("inputs")
    bundles = root / "bundles"
    bundles.mkdir()
    write_bundle(bundles / "good.json.gz", patient_bundle("b-good"))
    write_bundle(bundles / "no-birth.json", patient_bundle("b-nobirth", birth=None))
    write_bundle(bundles / "odd-unit.json", patient_bundle("b-oddunit", egfr=1.1, egfr_unit="mg/dL"))
    write_bundle(bundles / "dead.json", patient_bundle("b-dead", deceased=True))
    (bundles / "corrupt.json.gz").write_bytes(gzip.compress(b'{"resourceType": "Bundle", "entry": [')[:40])
    (bundles / "broken.json").write_text('{"resourceType": "Bundle", "entry": [', encoding="utf-8")
    write_bundle(
        bundles / "hospitalInformation1.json",
        {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Organization", "id": "o1"}}]},
    )
    orphan = patient_bundle("b-orphan")
    orphan["entry"] = orphan["entry"][1:]
    write_bundle(bundles / "orphan.json", orphan)
    (root / "table.csv").write_text("\n".join([CSV_HEADER, *CSV_ROWS]) + "\n", encoding="utf-8")
    bulk = root / "bulk"
    bulk.mkdir()
    res = [r["resource"] for r in patient_bundle("n-1")["entry"]] + [
        r["resource"] for r in patient_bundle("n-2")["entry"]
    ]
    by_type: dict[str, list[str]] = {}
    for r in res:
        by_type.setdefault(r["resourceType"], []).append(json.dumps(r))
    by_type["Observation"].append("{not json")
    by_type["Observation"].append(
        json.dumps({"resourceType": "Observation", "id": "lost", "status": "final"})
    )
    by_type["Condition"] = [
        json.dumps(
            {
                "resourceType": "Condition",
                "id": "c9",
                "subject": {"reference": "Patient/ghost"},
                "code": {"text": "epilepsy"},
            }
        )
    ]
    for rtype, lines in by_type.items():
        (bulk / f"{rtype}.ndjson").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = root / "out"
    result = run_screen(
        ScreenOptions(
            inputs=[bundles, root / "table.csv", bulk],
            out=out,
            rules=RULES,
            as_of=AS_OF,
            assume_order="baclofen 5 mg PO TID",
            progress=False,
        )
    )
    return out, result.exit_code


def test_rejected_records_have_reasons_and_exit_code(screened):
    out, code = screened
    assert code == EXIT_REJECTED
    errors = pl.read_csv(out / "errors.csv")
    reasons = {
        (Path(r["source"]).name, r["row"] if r["row"] is not None else None): r["reason"]
        for r in errors.iter_rows(named=True)
    }
    assert "corrupt bundle" in reasons[("corrupt.json.gz", None)]
    assert "corrupt bundle" in reasons[("broken.json", None)]
    assert "no patient" in reasons[("orphan.json", None)]
    assert "column egfr" in reasons[("table.csv", 3)]
    assert "cells" in reasons[("table.csv", 4)]
    assert "no patient_id" in reasons[("table.csv", 5)]
    assert any("not JSON" in r for (f, _), r in reasons.items() if f == "Observation.ndjson")
    assert any("names no patient" in r for (f, _), r in reasons.items() if f == "Observation.ndjson")
    assert any("no Patient record for Patient/ghost" in r for r in reasons.values())
    assert len(errors) == 9


def test_odd_values_are_screened_with_cannot_assess(screened):
    out, _ = screened
    patients = pl.read_parquet(out / "patients.parquet")
    alerts = pl.read_parquet(out / "alerts.parquet")
    screened_ids = set(patients.filter(pl.col("status") == "screened")["patient_id"])
    assert {
        "b-good",
        "b-nobirth",
        "b-oddunit",
        "t-ok",
        "t-no-birth",
        "t-odd-unit",
        "n-1",
        "n-2",
    } <= screened_ids

    def cannot(pid: str) -> set[str]:
        rows = alerts.filter((pl.col("patient_id") == pid) & (pl.col("kind") == "cannot-assess"))
        return set(rows["tier_id"])

    def missing_facts(pid: str) -> set[str]:
        rows = alerts.filter(pl.col("patient_id") == pid)
        return {m for v in rows["missing"] for m in v.split(";") if m}

    assert "missing-data.age" in cannot("b-nobirth") and "missing-data.age" in cannot("t-no-birth")
    # an eGFR in mg/dL is unusable: the renal checks say they could not be done (rule BAC-R00 covers it)
    for pid in ("b-oddunit", "t-odd-unit"):
        rules = set(alerts.filter(pl.col("patient_id") == pid)["rule_id"])
        assert "BAC-R00" in rules or "egfr" in missing_facts(pid)
    assert alerts.filter(pl.col("patient_id") == "t-ok").height > 0


def test_deceased_left_out_and_reconciled(screened):
    out, _ = screened
    summary = json.loads((out / "summary.json").read_text())
    c = summary["counts"]
    assert c["read"] == c["screened"] + c["rejected"] + c["deceased"]
    assert c["deceased"] == 2 and c["rejected"] == 9
    assert c["screened"] == 8
    patients = pl.read_parquet(out / "patients.parquet")
    dead = patients.filter(pl.col("status") == "deceased-excluded")
    assert set(dead["patient_id"]) == {"b-dead", "t-dead"}
    alerts = pl.read_parquet(out / "alerts.parquet")
    assert alerts.filter(pl.col("patient_id").is_in(["b-dead", "t-dead"])).height == 0
    skipped = [Path(p).name for p, _ in summary["skipped"]]
    assert "hospitalInformation1.json" in skipped
    html = (out / "report.html").read_text()
    assert (
        "balanced" in html and "<svg" in html and "http" not in html.split("<svg", 1)[0].split("<style>")[0]
    )
    assert str(c["read"]) in html


def test_outputs_exist_and_agree(screened):
    out, _ = screened
    for name in ("alerts.parquet", "alerts.csv", "patients.parquet", "errors.csv", "report.html"):
        assert (out / name).exists(), name
    assert not (out / ".parts").exists()
    parquet = pl.read_parquet(out / "alerts.parquet")
    csv = pl.read_csv(out / "alerts.csv", infer_schema=False)
    assert parquet.height == csv.height
    patients = pl.read_parquet(out / "patients.parquet")
    assert patients["alerts"].sum() == parquet.height


def test_usage_errors_exit_2(tmp_path):
    with pytest.raises(ScreenError):
        run_screen(
            ScreenOptions(inputs=[tmp_path], out=tmp_path / "o", rules=RULES, as_of=AS_OF, progress=False)
        )
    (tmp_path / "x.csv").write_text("patient_id,egfr\np1,20\n", encoding="utf-8")
    result = CliRunner().invoke(
        app,
        [
            "screen",
            str(tmp_path / "x.csv"),
            "--out",
            str(tmp_path / "o"),
            "--rules",
            str(RULES),
            "--assume-order",
            "5 mg",
            "--as-of",
            AS_OF,
        ],
    )
    assert result.exit_code == EXIT_USAGE, result.output
    result = CliRunner().invoke(
        app,
        [
            "screen",
            str(tmp_path / "x.csv"),
            "--out",
            str(tmp_path / "o"),
            "--rules",
            str(RULES),
            "--assume-order",
            "baclofen 5 mg PO TID",
            "--as-of",
            AS_OF,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "balanced" in result.output
