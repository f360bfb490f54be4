"""Bulk NDJSON: Procedures no fact reads stay undecoded, and the inline routing loop (issue 20 item 4).

Two changes to ``sources/ndjson.py``, each held to what it replaced:

* :meth:`ObservationFilter.defer_procedure` leaves a Procedure line undecoded when the mapping's
  only reader of Procedures (``_Mapper._last_procedure``) would pass over it: not completed or in
  progress, or a code in no ``condition_group``. The screening outputs and every record's facts
  must equal those of the full parse, on an export built so that a needed Procedure skipped (a
  dialysis procedure, one referenced by an order's reason) changes them.
* :func:`_route_file` routes the common line inline; the partition files, the shared file, the
  errors and the patient count must be byte for byte those of :func:`_route` called per line, on
  lines of every odd shape.

And :func:`read_partition`'s inline read of each line's prefix still reads a partition of the older
``[file, line]`` format (a resumed run).
"""

from __future__ import annotations

import json
import zlib
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from tests.test_ndjson_deferred import _screen, _write  # the same export writer and screen call

import cds_engine.sources.ndjson as nd
from cds_engine.engine import Engine
from cds_engine.sources.compressed import byte_lines
from cds_engine.sources.fhir import facts_from_resources
from cds_engine.sources.fhir_read import Deferred
from cds_engine.sources.ndjson import ObservationFilter, partition_export, read_partition
from conftest import RULES

AS_OF = "2026-01-15T00:00:00+00:00"
SNOMED = "http://snomed.info/sct"
DIALYSIS = {"coding": [{"system": SNOMED, "code": "233575001", "display": "Intermittent hemodialysis"}]}
CHECKUP = {"coding": [{"system": SNOMED, "code": "430193006", "display": "Medication reconciliation"}]}
BACLOFEN = {
    "coding": [
        {
            "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
            "code": "197391",
            "display": "Baclofen 10 MG Oral Tablet",
        }
    ]
}


def _proc(pid: str, rid: str, code: Any, status: Any = "completed", when: str = "2025-12-01") -> dict:
    return {
        "resourceType": "Procedure",
        "id": rid,
        "status": status,
        "code": code,
        "subject": {"reference": f"Patient/{pid}"},
        "performedDateTime": when,
    }


def _order(pid: str, rid: str, **extra: Any) -> dict:
    return {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": "2026-01-10",
        "medicationCodeableConcept": BACLOFEN,
        "dosageInstruction": [
            {
                "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": {"value": 10, "unit": "mg"}}],
            }
        ],
        **extra,
    }


def generated() -> dict[str, list[str]]:
    """Procedures where skipping a needed line changes the facts (dialysis, one referenced by an order;
    Encounters, decoded in full, beside them: current and past, referenced, odd; odd lines)."""
    pids = ["pa", "pb", "pc", "pd"]
    procs = [
        _proc("pa", "a1", DIALYSIS),  # counted: the last dialysis procedure
        _proc("pa", "a2", CHECKUP),  # no condition group: deferred
        _proc("pa", "a3", DIALYSIS, status="not-done", when="2026-01-01"),  # not counted: deferred
        _proc("pb", "b1", CHECKUP),
        _proc("pb", "b2", DIALYSIS, status="in-progress", when="2026-01-10"),
        _proc("pc", "c1", CHECKUP),  # named by the order's reasonReference: resolved, decoded then
        _proc("pd", "d1", {"text": "Intermittent hemodialysis"}),  # text only
        _proc("pd", "d2", [DIALYSIS]),  # a code of the wrong shape
    ]
    lines = [json.dumps(p) for p in procs]
    lines.append(  # a duplicate status: the last wins, as in the full parse
        '{"resourceType":"Procedure","id":"d3","status":"completed","status":"not-done","code":'
        + json.dumps(DIALYSIS)
        + ',"subject":{"reference":"Patient/pd"},"performedDateTime":"2026-01-05"}'
    )
    lines.append(json.dumps(_proc("ghost", "g1", CHECKUP)))  # a patient with no Patient record
    orders = [
        json.dumps(
            _order(
                "pc", "rc", reasonReference=[{"reference": "Procedure/c1"}], encounter={"reference": "ec1"}
            ),
        )
    ]
    orders += [json.dumps(_order(p, f"r{p}")) for p in ("pa", "pb", "pd")]
    encounters = [
        _enc("pa", "ea1", "finished", "2025-10-01T08:00:00Z", "2025-10-03T08:00:00Z"),  # past: deferred
        _enc("pa", "ea2", "in-progress", "2026-01-12T08:00:00Z", None),  # current inpatient stay
        _enc("pb", "eb1", "finished", "2026-01-10T08:00:00Z", "2026-01-20T08:00:00Z"),  # ends after as_of
        _enc("pb", "eb2", "planned", "2026-01-01T08:00:00Z", None),
        _enc("pc", "ec1", "finished", "2026-01-14T08:00:00+05:00", "2026-01-14T20:00:00"),  # the order's
        _enc("pc", "ec2", "in-progress", "2026-02-01T08:00:00Z", None),  # starts after as_of
        _enc("pc", "ec3", "in-progress", "2026-01-13", None, cls="AMB"),  # current, not inpatient
        _enc("pd", "ed1", {"coding": [{"code": "in-progress"}]}, "2026-01-01T00:00:00Z", None),
        _enc("pd", "ed2", "finished", 20260101, "not a date"),
        _enc("pd", "ed3", "arrived", None, None),
        _enc("pd", "ed4", "finished", "2025-01-01", "2025-02-01", period=["odd"]),
    ]
    enc_lines = [json.dumps(e) for e in encounters]
    enc_lines.append(  # a duplicate period: the last wins, as in the full parse
        '{"resourceType":"Encounter","id":"ed5","status":"finished","class":{"code":"IMP"},'
        '"period":{"start":"2026-01-01T00:00:00Z","end":"2026-03-01T00:00:00Z"},'
        '"period":{"start":"2025-01-01T00:00:00Z","end":"2025-01-02T00:00:00Z"},'
        '"subject":{"reference":"Patient/pd"}}'
    )
    conditions = [  # encounter-diagnoses: of a current encounter, and of a deferred one
        json.dumps(_diagnosis("pa", "ca", "ea2")),
        json.dumps(_diagnosis("pb", "cb", "eb2")),
        json.dumps(_diagnosis("pc", "cc", "ec1")),
    ]
    patients = [
        json.dumps({"resourceType": "Patient", "id": p, "birthDate": "1950-03-04", "gender": "male"})
        for p in pids
    ]
    return {
        "Patient": patients,
        "Procedure": lines,
        "MedicationRequest": orders,
        "Encounter": enc_lines,
        "Condition": conditions,
    }


def _enc(pid: str, rid: str, status: Any, start: Any, end: Any, cls: str = "IMP", **extra: Any) -> dict:
    period = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    return {
        "resourceType": "Encounter",
        "id": rid,
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": cls},
        "subject": {"reference": f"Patient/{pid}"},
        "period": period,
        **extra,
    }


def _diagnosis(pid: str, rid: str, encounter: str) -> dict:
    return {
        "resourceType": "Condition",
        "id": rid,
        "category": [{"coding": [{"code": "encounter-diagnosis"}]}],
        "code": {"coding": [{"system": SNOMED, "code": "221360009", "display": "Spasticity (finding)"}]},
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "encounter": {"reference": f"Encounter/{encounter}"},
        "onsetDateTime": "2025-06-01",
    }


def _full_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ObservationFilter, "defer", lambda self, text: None)
    monkeypatch.setattr(ObservationFilter, "defer_procedure", lambda self, text: None)


@pytest.mark.parametrize("assume", [None, "baclofen 5 mg PO TID"])
def test_procedures_same_outputs_as_full_parse(tmp_path, monkeypatch, assume):
    folder = _write(tmp_path / "bulk", generated())
    fast = _screen([folder], tmp_path / "fast", assume)
    _full_parse(monkeypatch)
    full = _screen([folder], tmp_path / "full", assume)
    assert fast[1].height == 4
    for a, b in zip(fast, full, strict=True):
        assert a.equals(b)


def _records(tmp_path: Path, observations: ObservationFilter | None) -> dict[str, Any]:
    folder = _write(tmp_path / "bulk", generated())
    result = partition_export(sorted(folder.iterdir()), tmp_path / "parts", 2)
    return {
        key: res
        for part in result.parts
        for key, _f, n, res in read_partition(part, result.shared, observations)
        if n >= 0
    }


def _facts(resources: Any, drafts: list[dict], args: dict) -> Any:
    try:
        return facts_from_resources(resources, draft_orders=drafts, **args).model_dump()
    except Exception as exc:  # the same error either way
        return repr(exc)


def test_each_record_maps_to_the_same_facts(tmp_path):
    engine = Engine.from_dir(RULES)
    flt = ObservationFilter(p.vocabulary for p in engine.running_packs)
    fast, full = _records(tmp_path / "a", flt), _records(tmp_path / "b", None)
    assert fast.keys() == full.keys() == {"pa", "pb", "pc", "pd"}
    deferred = {d.id for key in fast for d in fast[key].deferred}
    assert {"a2", "a3", "b1", "c1"} <= deferred and not {"a1", "b2", "d1"} & deferred
    assert not any(d.resourceType == "Encounter" for key in fast for d in fast[key].deferred)
    moment = datetime.fromisoformat(AS_OF)
    dialysis, inpatient = set(), set()
    for key in full:
        assert not any(isinstance(r, Deferred) for r in fast[key])
        orders = [r for r in full[key] if r.get("resourceType") == "MedicationRequest"]
        for pack in engine.packs:
            for drafts in ([], *([o] for o in orders)):
                args = {"as_of": moment, "vocab": pack.vocabulary, "drug_class": pack.context.drug_class}
                a, b = (_facts(r, drafts, args) for r in (fast[key], full[key]))
                assert a == b, (key, pack.id)
                if isinstance(a, dict) and a["renal"]["last_dialysis_procedure"]:
                    dialysis.add(key)
                if isinstance(a, dict) and a["encounter"]["inpatient"]:
                    inpatient.add(key)
    assert dialysis >= {"pa", "pb"}  # the fixture counts procedures: a wrong deferral would show
    assert inpatient >= {"pa", "pb"}  # … and current encounters


# ── the inline routing loop ──────────────────────────────────────────────────────────────


def _per_line(files: list[Path], workdir: Path, parts: int) -> nd.PartitionResult:
    """partition_export as it was: :func:`_route` for every line."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = [workdir / f"part-{i:04d}.ndjson" for i in range(parts)]
    result = nd.PartitionResult(parts=paths, shared=workdir / "shared.ndjson")
    spill = nd._Spill(paths)
    try:
        with result.shared.open("wb") as shared:
            for f in sorted(files):
                name = spill.json(str(f))
                try:
                    for n, line in enumerate(byte_lines(f), start=1):
                        if line is None:
                            result.errors.append(nd.NdjsonError(str(f), n, "line too long: skipped"))
                            continue
                        nd._route(f, name, n, line, spill, shared, result)
                except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
                    result.errors.append(nd.NdjsonError(str(f), 0, f"file cannot be read to the end: {exc}"))
    finally:
        spill.close()
    return result


ODD_LINES = [
    '\ufeff{"resourceType":"Patient","id":"p1"}',  # a first line with a byte-order mark
    '{"resourceType":"Patient","id":"p2","gender":"female"}',
    '{"resourceType":"Patient","id":7}',  # a number as id
    '{"resourceType":"Patient"}',  # no id: names no patient
    '{"resourceType":"Patient","id":"sur\\ud800"}',  # a lone surrogate
    '{"resourceType":"Patient","id":"ünï"}',
    '  {"resourceType":"Condition","subject":{"reference":"Patient/p1"}}  ',  # spaces around
    '{"resourceType":"Condition","subject":{"reference":"urn:uuid:p2"}}',
    '{"resourceType":"Condition","subject":{"reference":"Patient/p1/_history/2"}}',
    '{"resourceType":"Condition","subject":{"reference":"Group/x"},"patient":{"reference":"Patient/p2"}}',
    '{"resourceType":"Condition","subject":"Patient/p1"}',  # a reference of the wrong shape
    '{"resourceType":"Condition","subject":{"reference":5}}',
    '{"resourceType":"Claim","patient":{"reference":"Patient/p1"}}',  # unread: one marker per patient
    '{"resourceType":"Claim","patient":{"reference":"Patient/p1"}}',
    '{"resourceType":"ExplanationOfBenefit","patient":{"reference":"Patient/p3"}}',
    '{"resourceType":"Coverage","beneficiary":{"reference":"Patient/p2"}}',
    '{"resourceType":"RelatedPerson","individual":{"reference":"Patient/p4"}}',  # no Patient record
    '{"resourceType":"Provenance","target":[]}',  # names no patient
    '{"resourceType":"Organization","id":"o1"}',
    '{"resourceType":"Location","id":"l1","nope":NaN}',
    '{"resourceType":"Medication","id":"m1"}',
    '{"resourceType":"Medication","id":"m1"}',
    '{"resourceType":["Patient"],"id":"x"}',  # a type that is not a string
    '{"resourceType":{"a":1},"id":"x"}',
    '{"id":"no-type"}',
    '["not", "an", "object"]',
    "{not json",
    "",
    "   ",
    '{"resourceType":"Observation","subject":{"reference":"Patient/p2"},"valueQuantity":{"value":NaN}}',
    '{"resourceType":"Observation","subject":{"reference":"Patient/p2"},"v":1e999}',
    '{"resourceType":"Observation","resourceType":"Claim","subject":{"reference":"Patient/p1"}}',
    '{"resourceType":"Procedure","subject":{"reference":"Patient/p1"}}\r',
]


@pytest.mark.parametrize("parts", [1, 3])
def test_inline_routing_is_route_per_line(tmp_path, parts):
    folder = tmp_path / "bulk"
    folder.mkdir()
    (folder / "a.ndjson").write_bytes("\n".join(ODD_LINES).encode("utf-8", "surrogatepass") + b"\n")
    (folder / "b.ndjson").write_bytes("\n".join(reversed(ODD_LINES)).encode("utf-8", "surrogatepass"))
    (folder / "c.ndjson").write_bytes(b'{"resourceType":"Patient","id":"p9"}\n{"resourceType":"Pa\xff"}\n')
    files = sorted(folder.iterdir())
    new = partition_export(files, tmp_path / "new", parts)
    old = _per_line(files, tmp_path / "old", parts)
    assert new.errors == old.errors and new.patients == old.patients
    assert len(new.errors) >= 10
    for a, b in zip([*new.parts, new.shared], [*old.parts, old.shared], strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert sum(p.stat().st_size for p in new.parts) > 0


def test_shipped_patients_same_outputs_with_procedures_deferred(tmp_path, monkeypatch):
    """The shipped Synthea patients as a Bulk export: Procedures deferred, the same outputs."""
    from test_sources_selective import _export, shipped

    folder = _export(tmp_path, [data for _, data in shipped()])
    fast = _screen([folder], tmp_path / "fast", "baclofen 5 mg PO TID")
    _full_parse(monkeypatch)
    full = _screen([folder], tmp_path / "full", "baclofen 5 mg PO TID")
    assert fast[1].height > 10 and fast[0].height > 10
    for a, b in zip(fast, full, strict=True):
        assert a.equals(b)


def test_a_partition_of_the_older_format_still_reads(tmp_path):
    """A resumed run's partition written before selective decoding: ``[file, line]`` and the resource."""
    part = tmp_path / "part-0000.ndjson"
    rows = [
        (["Patient.ndjson", 3], {"resourceType": "Patient", "id": "p1"}),
        (["Condition.ndjson", 1], {"resourceType": "Condition", "subject": {"reference": "Patient/p1"}}),
        (["Condition.ndjson", 2], {"resourceType": "Condition", "subject": {"reference": "Patient/p2"}}),
    ]
    part.write_text("".join(f"{json.dumps(w)}\t{json.dumps(r)}\n" for w, r in rows), encoding="utf-8")
    got = [(key, f, n, len(res)) for key, f, n, res in read_partition(part, None)]
    assert got == [("p1", "Patient.ndjson", 3, 2), ("p2", "Condition.ndjson", -1, 1)]
