"""Bulk NDJSON: Observations no fact reads stay undecoded (issue 20 item 4) — and nothing changes.

:class:`~cds_engine.sources.ndjson.ObservationFilter` lets :func:`read_partition` leave an
Observation line undecoded when no running pack's mapping could count it (status not final, or a
code in no ``observation`` group). Such a line is out of the record's list but keeps its place in
the record's index (:class:`~cds_engine.sources.fhir_read.Deferred`): a ``reasonReference``, an
``Observation/id`` or a bare id still resolves to it, decoded then. Here the screening outputs
(alerts, patient rows, rejected records) with the filter must equal those of the full parse, on a
generated export built to catch a needed line that was skipped (references to deferred
Observations by type and id, by bare id, an id shared with a shared Medication, odd and malformed
lines) and on the shipped Synthea patients; and a filter that *dropped* those lines must be caught.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import cds_engine.batch.work as work
from cds_engine.engine import Engine
from cds_engine.sources.fhir import _Mapper, facts_from_resources
from cds_engine.sources.fhir_read import Deferred, SharedRecord
from cds_engine.sources.ndjson import ObservationFilter, partition_export, read_partition
from conftest import RULES
from test_sources_selective import _export, shipped

AS_OF = "2026-01-15T00:00:00+00:00"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
EGFR = {"coding": [{"system": LOINC, "code": "33914-3", "display": "eGFR"}]}
HEIGHT = {"coding": [{"system": LOINC, "code": "8302-2", "display": "Body height"}], "text": "Body height"}
ALCOHOL = {"coding": [{"system": ICD10, "code": "F10.10", "display": "Alcohol abuse, uncomplicated"}]}
SPASTICITY = {"coding": [{"system": SNOMED, "code": "221360009", "display": "Spasticity (finding)"}]}
BACLOFEN = {"coding": [{"system": RXNORM, "code": "197391", "display": "Baclofen 10 MG Oral Tablet"}]}


def _obs(
    oid: str, pid: str, code: Any, status: Any = "final", value: float | None = 40, **extra: Any
) -> dict:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "code": code,
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2025-12-01T08:00:00Z",
        **extra,
    }
    if value is not None:
        resource["valueQuantity"] = {"value": value, "unit": "mL/min/{1.73_m2}"}
    return resource


def _order(rid: str, pid: str, **extra: Any) -> dict:
    return {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": "2026-01-10",
        "dosageInstruction": [
            {
                "route": {"text": "oral"},
                "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": {"value": 10, "unit": "mg"}}],
            }
        ],
        **({"medicationCodeableConcept": BACLOFEN} if "medicationReference" not in extra else {}),
        **extra,
    }


def _patient(pid: str) -> dict:
    return {"resourceType": "Patient", "id": pid, "birthDate": "1950-03-04", "gender": "female"}


def generated() -> dict[str, list[str]]:
    """An export (lines per type) where skipping a needed Observation line changes the outputs."""
    obs: list[str] = []
    orders: list[str] = []
    patients = [_patient(p) for p in ("pa", "pb", "pc", "pd", "pe", "pf", "pg")]
    # pa: a readable eGFR (counted), observations no fact reads, a preliminary eGFR (not counted)
    obs += [json.dumps(_obs("a1", "pa", EGFR, value=25)), json.dumps(_obs("a2", "pa", HEIGHT, value=170))]
    obs += [json.dumps(_obs("a3", "pa", EGFR, status="preliminary", value=5))]
    obs += [json.dumps(_obs("a4", "pa", {"text": "Body height"}, value=171))]  # text only
    obs += [json.dumps(_obs("a5", "pa", [EGFR], value=6))]  # a code of the wrong shape
    # pb: the newest eGFR has no value (cannot assess: never replaced by an older one)
    obs += [json.dumps(_obs("b1", "pb", EGFR, value=None, effectiveDateTime="2026-01-02T00:00:00Z"))]
    obs += [json.dumps(_obs("b2", "pb", EGFR, value=80)), json.dumps(_obs("b3", "pb", HEIGHT))]
    # pc: the order's reasonReference names an Observation by type/id (code of no observation group)
    obs += [json.dumps(_obs("c1", "pc", ALCOHOL, value=None)), json.dumps(_obs("c2", "pc", HEIGHT))]
    orders += [json.dumps(_order("rc", "pc", reasonReference=[{"reference": "Observation/c1"}]))]
    # pd: … by bare id, and a second reason by urn:uuid
    obs += [json.dumps(_obs("d1", "pd", SPASTICITY, value=None)), json.dumps(_obs("d2", "pd", ALCOHOL))]
    orders += [
        json.dumps(_order("rd", "pd", reasonReference=[{"reference": "d2"}, {"reference": "urn:uuid:d1"}]))
    ]
    # pe: an Observation whose id is also the shared Medication's: a bare-id reference resolves to the
    # patient's own Observation first (its code is not a drug): no order of the pack's drug
    obs += [json.dumps(_obs("medx", "pe", HEIGHT)), json.dumps(_obs("e2", "pe", EGFR, value=50))]
    orders += [json.dumps(_order("re", "pe", medicationReference={"reference": "medx"}))]
    # pf: odd lines — a duplicate status (the last wins), a duplicate code, NaN; pg: a code that cannot
    # be classified (a lone surrogate): the record is rejected as with the full parse
    obs += [
        '{"resourceType":"Observation","id":"f1","status":"preliminary","status":"final","code":'
        + json.dumps(EGFR)
        + ',"subject":{"reference":"Patient/pf"},"effectiveDateTime":"2025-11-01",'
        '"valueQuantity":{"value":33}}',
        '{"resourceType":"Observation","id":"f2","status":"final","code":'
        + json.dumps(EGFR)
        + ',"code":'
        + json.dumps(HEIGHT)
        + ',"subject":{"reference":"Patient/pf"},"effectiveDateTime":"2025-12-20",'
        '"valueQuantity":{"value":3}}',
        '{"resourceType":"Observation","id":"f3","status":"final","code":{"text":"x\\ud800"},'
        '"subject":{"reference":"Patient/pg"},"effectiveDateTime":"2025-12-21"}',
        '{"resourceType":"Observation","id":"f4","status":"final","code":' + json.dumps(HEIGHT)
        + ',"subject":{"reference":"Patient/pf"},"valueQuantity":{"value":NaN}}',
        "{not json",
        json.dumps(_obs("g1", "ghost", HEIGHT)),  # a patient with no Patient record
    ]
    orders += [json.dumps(_order("rf", "pf"))]
    medication = {"resourceType": "Medication", "id": "medx", "code": BACLOFEN}
    return {
        "Patient": [json.dumps(p) for p in patients],
        "Observation": obs,
        "MedicationRequest": orders,
        "Medication": [json.dumps(medication)],
    }


def _write(folder: Path, lines: dict[str, list[str]]) -> Path:
    folder.mkdir(parents=True)
    for rtype, rows in lines.items():
        (folder / f"{rtype}.ndjson").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def _screen(inputs: list[Path], out: Path, assume: str | None) -> tuple[pl.DataFrame, ...]:
    from cds_engine.batch.runner import ScreenOptions, run_screen

    run_screen(
        ScreenOptions(inputs=inputs, out=out, rules=RULES, as_of=AS_OF, assume_order=assume, progress=False)
    )
    alerts = pl.read_parquet(out / "alerts.parquet")
    patients = pl.read_parquet(out / "patients.parquet")
    errors = pl.read_csv(out / "errors.csv", infer_schema=False)
    return alerts, patients, errors


def _full_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ObservationFilter, "defer", lambda self, text: None)


@pytest.mark.parametrize("assume", [None, "baclofen 5 mg PO TID"])
def test_generated_export_same_outputs_as_full_parse(tmp_path, monkeypatch, assume):
    folder = _write(tmp_path / "bulk", generated())
    fast = _screen([folder], tmp_path / "fast", assume)
    assert fast[1].height == 6 and fast[0].height >= 4
    _full_parse(monkeypatch)
    full = _screen([folder], tmp_path / "full", assume)
    for a, b in zip(fast, full, strict=True):
        assert a.equals(b)
    reasons = fast[2]["reason"].to_list()
    assert any("ghost" in r for r in reasons) and any("not JSON" in r for r in reasons)
    assert fast[2].filter(pl.col("patient_id") == "pg")["reason"].str.contains("cannot be mapped").all()


def test_a_filter_that_drops_the_lines_is_caught(tmp_path, monkeypatch):
    """The fixture is sharp: leaving the deferred Observations out (not in the index) changes the outputs."""
    folder = _write(tmp_path / "bulk", generated())
    full_alerts = None
    _full_parse(monkeypatch)
    full = _screen([folder], tmp_path / "full", None)
    full_alerts = full[0]
    monkeypatch.undo()
    real = work.read_partition

    def dropping(part, shared, observations=None):
        for key, file, n, resources in real(part, shared, observations):
            if isinstance(resources, SharedRecord) and resources.order is not None:
                resources = SharedRecord(list(resources[: resources.own]), resources[resources.own :],
                                         resources.shared_index, resources.shared_by_type)
            yield key, file, n, resources

    monkeypatch.setattr(work, "read_partition", dropping)
    dropped = _screen([folder], tmp_path / "dropped", None)
    assert not dropped[0].equals(full_alerts)


def test_shipped_patients_export_same_outputs_as_full_parse(tmp_path, monkeypatch):
    folder = _export(tmp_path, [data for _, data in shipped()])
    fast = _screen([folder], tmp_path / "fast", "baclofen 5 mg PO TID")
    assert fast[1].height > 10 and fast[0].height > 10
    _full_parse(monkeypatch)
    full = _screen([folder], tmp_path / "full", "baclofen 5 mg PO TID")
    for a, b in zip(fast, full, strict=True):
        assert a.equals(b)


def _records(tmp_path: Path, observations: ObservationFilter | None) -> dict[str, list[dict]]:
    folder = _write(tmp_path / "bulk", generated())
    result = partition_export(sorted(folder.iterdir()), tmp_path / "parts", 2)
    return {
        key: res
        for part in result.parts
        for key, _f, n, res in read_partition(part, result.shared, observations)
        if n >= 0
    }


def _facts_or_error(resources: list[dict], drafts: list[dict], args: dict) -> Any:
    try:
        return facts_from_resources(resources, draft_orders=drafts, **args).model_dump()
    except Exception as exc:  # the same error either way (a record the batch rejects)
        return repr(exc)


def test_each_record_maps_to_the_same_facts(tmp_path):
    """Per patient and pack, with each of the patient's orders as the draft: the same facts."""
    engine = Engine.from_dir(RULES)
    flt = ObservationFilter(p.vocabulary for p in engine.running_packs)
    fast, full = _records(tmp_path / "a", flt), _records(tmp_path / "b", None)
    assert fast.keys() == full.keys()
    deferred = 0
    moment = datetime.fromisoformat(AS_OF)
    for key in full:
        deferred += len(fast[key].deferred)
        assert not any(isinstance(r, Deferred) for r in fast[key])
        orders = [r for r in full[key] if r.get("resourceType") == "MedicationRequest"]
        for pack in engine.packs:
            for drafts in ([], *([o] for o in orders)):
                args = {"as_of": moment, "vocab": pack.vocabulary, "drug_class": pack.context.drug_class}
                a, b = (_facts_or_error(r, drafts, args) for r in (fast[key], full[key]))
                assert a == b, (key, pack.id)
    assert deferred >= 8


def test_an_observation_the_mapping_counts_is_never_deferred(tmp_path):
    """Every Observation line the mapping would count (for any running pack) is decoded in full."""
    engine = Engine.from_dir(RULES)
    flt = ObservationFilter(p.vocabulary for p in engine.running_packs)
    moment = datetime(2026, 1, 15, tzinfo=UTC)
    counted = kept = 0
    for line in generated()["Observation"]:
        try:
            resource = json.loads(line)
        except ValueError:
            continue
        deferred = flt.defer(line.encode("utf-8", "surrogatepass"))
        for pack in engine.running_packs:
            try:
                found = bool(
                    _Mapper([resource], [], moment, pack.vocabulary, pack.context.drug_class)._observations()
                )
            except Exception:  # a code that cannot be read: the mapping must meet it
                found = True
            if found:
                counted += 1
                assert deferred is None, line
        kept += deferred is None
    assert counted >= 4 and kept > counted


def test_deferred_resource_decoded_once_on_reference(tmp_path):
    engine = Engine.from_dir(RULES)
    records = _records(tmp_path, ObservationFilter(p.vocabulary for p in engine.running_packs))
    record = records["pc"]
    (c1,) = [d for d in record.deferred if d.id == "c1"]
    from cds_engine.sources.fhir_read import ResourceIndex

    index = ResourceIndex.of_record(record, [])
    found = index.resolve({"reference": "Observation/c1"})
    assert found is index.resolve("c1") is c1.resource()
    assert found == json.loads(next(x for x in generated()["Observation"] if '"c1"' in x))
