"""A Bulk NDJSON partition indexes its shared resources once (issue 20 item 4): same answers, no leaks.

Every patient of a partition gets the export's shared resources (``Medication``). They are indexed
once per partition and each patient's index is built on top of that base: it must answer exactly as
the flat index of ``[*own, *shared, *drafts]`` did (the first of a type and id wins), and nothing a
record adds — a contained resource, a draft — may reach the base or another patient's index.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from cds_engine.sources.fhir import facts_from_resources
from cds_engine.sources.fhir_read import ResourceIndex, SharedRecord
from cds_engine.sources.ndjson import partition_export, read_partition

AS_OF = datetime(2026, 1, 15, tzinfo=UTC)


def _r(rtype: str, rid: str, **members: object) -> dict:
    return {"resourceType": rtype, "id": rid, **members}


OWN = [
    _r("Patient", "p1"),
    _r("Medication", "m1", code={"text": "own m1"}),  # shadows the shared m1
    _r("Observation", "x"),  # same id as a shared Medication: by_id keeps the first (this one)
    _r("Condition", "c1"),
    _r("Medication", "m1", code={"text": "own m1, second"}),  # a duplicate: the first stays
]
SHARED = [
    _r("Medication", "m1", code={"text": "shared m1"}),
    _r("Medication", "m2", code={"text": "shared m2"}),
    _r("Medication", "x", code={"text": "shared x"}),
    _r("Medication", "m3"),
]
DRAFTS = [
    _r("MedicationRequest", "d1"),
    _r("Medication", "m2", code={"text": "draft m2"}),  # loses to the shared m2
    _r("Medication", "m9", code={"text": "draft m9"}),
]
REFERENCES = [
    "Medication/m1",
    "Medication/m2",
    "Medication/m3",
    "Medication/m9",
    "Medication/x",
    "Observation/x",
    "urn:uuid:m1",
    "urn:uuid:m2",
    "urn:uuid:x",
    "urn:uuid:m9",
    "urn:uuid:d1",
    "m2",
    "x",
    "https://server.example/fhir/Medication/m2/_history/3",
    "Patient/p1",
    "Patient/p2",
    "Medication/none",
    "#m1",
]


def _record(own: list[dict] = OWN) -> SharedRecord:
    return SharedRecord(list(own), SHARED, ResourceIndex(SHARED))


def test_a_record_on_a_shared_base_answers_as_the_flat_index():
    flat = ResourceIndex([*OWN, *SHARED, *DRAFTS])
    layered = ResourceIndex.of_record(_record(), DRAFTS)
    assert layered._base is not None
    for ref in REFERENCES:
        assert layered.resolve(ref) is flat.resolve(ref), ref
        assert layered.resolve({"reference": ref}) is flat.resolve({"reference": ref}), ref
    for rtype in ("Medication", "Observation", "Patient", "MedicationRequest", "Encounter"):
        assert [id(r) for r in layered.of_type(rtype)] == [id(r) for r in flat.of_type(rtype)], rtype
    for key in ("Medication/m1", "Medication/m3", "Medication/m9", "Observation/x", "Encounter/e"):
        assert (key in layered) == (key in flat), key


def test_a_record_is_the_plain_list_of_its_own_and_shared_resources():
    record = _record()
    assert record == [*OWN, *SHARED]
    assert isinstance(record, list)
    changed = _record()
    changed.append(_r("Medication", "m7"))  # changed since it was made: indexed in full, as before
    index = ResourceIndex.of_record(changed, DRAFTS)
    assert index._base is None
    assert index.resolve("Medication/m7") is changed[-1]


def test_what_a_record_adds_never_reaches_the_base_or_another_record():
    base = ResourceIndex(SHARED)
    first = ResourceIndex.of_record(SharedRecord([_r("Patient", "a")], SHARED, base), [])
    second = ResourceIndex.of_record(SharedRecord([_r("Patient", "b")], SHARED, base), [])
    contained = _r("Medication", "cm", code={"text": "contained in a's order"})
    first.add(contained)
    first.add(_r("Medication", "m1", code={"text": "added after the base: loses"}))
    assert first.resolve("Medication/cm") is contained
    assert first.resolve("Medication/m1") is SHARED[0]
    assert second.resolve("Medication/cm") is None
    assert second.resolve("urn:uuid:cm") is None
    assert base.resolve("Medication/cm") is None
    assert "Medication/cm" not in base and "Medication/cm" not in second
    assert base._by_key.keys() == {f"Medication/{r['id']}" for r in SHARED}
    assert base._by_id.keys() == {r["id"] for r in SHARED}


def test_contained_resources_resolve_only_in_their_own_container():
    order_a = _r(
        "MedicationRequest",
        "ra",
        contained=[_r("Medication", "med", code={"text": "a's contained"})],
        medicationReference={"reference": "#med"},
    )
    order_b = _r("MedicationRequest", "rb", medicationReference={"reference": "#med"})
    base = ResourceIndex(SHARED)
    index_a = ResourceIndex.of_record(SharedRecord([order_a], SHARED, base), [])
    index_b = ResourceIndex.of_record(SharedRecord([order_b], SHARED, base), [])
    assert index_a.resolve(order_a["medicationReference"], container=order_a) is order_a["contained"][0]
    assert index_b.resolve(order_b["medicationReference"], container=order_b) is None
    assert index_b.resolve(order_a["medicationReference"], container=order_b) is None


def _line(resource: dict) -> str:
    return json.dumps(resource) + "\n"


def _export(folder: Path) -> Path:
    """Two patients whose orders name shared Medications; one also holds a contained one of the same id."""
    folder.mkdir(parents=True)
    meds = [
        _r("Medication", "bac", code={"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                  "code": "1292", "display": "baclofen"}]}),
        _r("Medication", "ibu", code={"text": "ibuprofen 200 mg"}),
    ]
    (folder / "Medication.ndjson").write_text("".join(map(_line, meds)))
    patients = [_r("Patient", "a", birthDate="1950-01-01"), _r("Patient", "b", birthDate="1960-01-01")]
    (folder / "Patient.ndjson").write_text("".join(map(_line, patients)))
    def order(rid: str, patient: str, authored: str, **members: object) -> dict:
        return _r("MedicationRequest", rid, status="active", intent="order",
                  subject={"reference": f"Patient/{patient}"}, authoredOn=authored, **members)

    orders = [
        order("ra", "a", "2025-12-01",
              contained=[_r("Medication", "ibu", code={"text": "a's own contained ibuprofen"})],
              medicationReference={"reference": "#ibu"}),
        order("rb", "b", "2025-12-01", medicationReference={"reference": "Medication/ibu"}),
        order("rb2", "b", "2025-12-02", medicationReference={"reference": "Medication/bac"}),
    ]
    (folder / "MedicationRequest.ndjson").write_text("".join(map(_line, orders)))
    return folder


def test_partition_records_map_as_their_plain_lists(tmp_path: Path, pack):
    export = _export(tmp_path / "export")
    result = partition_export(sorted(export.iterdir()), tmp_path / "parts", 1)
    records = [(key, res) for _p in result.parts for key, _f, n, res in read_partition(_p, result.shared)
               if n >= 0]
    assert [key for key, _ in records] == ["a", "b"]
    bases = {id(res.shared_index) for _, res in records}
    assert len(bases) == 1  # one index of the shared resources per partition
    draft = _r("MedicationRequest", "draft", status="draft", intent="order",
               medicationCodeableConcept={"text": "baclofen 5 mg"})
    for _key, res in records:
        assert isinstance(res, SharedRecord)
        kwargs = {"as_of": AS_OF, "vocab": pack.vocabulary, "drug_class": pack.context.drug_class,
                  "draft_orders": [draft]}
        assert facts_from_resources(res, **kwargs) == facts_from_resources(list(res), **kwargs)
    base = next(iter(records))[1].shared_index
    assert base.resolve("Medication/ibu")["code"] == {"text": "ibuprofen 200 mg"}  # not a's contained one


def test_the_mapping_groups_a_record_by_type_as_its_plain_list(pack):
    """The shared part comes grouped once per partition: same lists (same objects), types and order."""
    from cds_engine.sources.fhir import _Mapper

    args = (DRAFTS, AS_OF, pack.vocabulary, pack.context.drug_class)
    layered, flat = _Mapper(_record(), *args), _Mapper([*OWN, *SHARED], *args)
    assert list(layered.by_type) == list(flat.by_type)
    for rtype, found in flat.by_type.items():
        assert [id(r) for r in layered.by_type[rtype]] == [id(r) for r in found], rtype
    record = _record()
    assert record.shared_by_type["Medication"] == SHARED  # grouped when made, if not given
    layered.by_type["Medication"].append(_r("Medication", "late"))
    assert len(record.shared_by_type["Medication"]) == len(SHARED)  # never written by the mapping


def _records() -> list[list[dict]]:
    changed = _record()
    changed.append(_r("Medication", "m7", code={"text": "appended"}))  # no longer intact: scanned in full
    return [[*OWN, *SHARED, *DRAFTS], _record(), changed, [_r("Medication", 5), _r(7, "m2"), *SHARED]]


def test_one_look_up_answers_as_the_index_of_the_record():
    from cds_engine.sources.fhir_read import resolve_in

    order = _r("MedicationRequest", "o", contained=[_r("Medication", "m1", code={"text": "contained"})])
    for resources in _records():
        flat = ResourceIndex(list(resources))
        for ref in [*REFERENCES, "Medication/m7", "urn:oid:m3", "", None, 5, {"reference": 5}]:
            for reference in (ref, {"reference": ref}):
                assert resolve_in(resources, reference, order) is flat.resolve(reference, order), ref


def _concept_by_index(order: dict, resources: list[dict]) -> dict | None:
    """medication_concept as it was: an index of the whole record built for the one look-up."""
    concept = order.get("medicationCodeableConcept")
    if isinstance(concept, dict):
        return concept
    reference = order.get("medicationReference")
    medication = ResourceIndex(list(resources)).resolve(reference, container=order)
    if medication is not None and isinstance(medication.get("code"), dict):
        return dict(medication["code"])
    if isinstance(reference, dict) and isinstance(reference.get("display"), str):
        return {"text": reference["display"]}
    return None


def test_several_orders_resolve_their_medications_without_an_index_per_order(monkeypatch):
    """Without --assume-order every active order's medication is resolved: once an index of the whole
    record per order (quadratic in orders); now a scan that answers the same."""
    from cds_engine.sources.fhir import medication_concept

    refs = ["Medication/m1", "urn:uuid:m2", "Medication/x", "Medication/m3", "#m1", "nothing"]
    refs.append("Medication/m7")
    orders = [
        _r("MedicationRequest", f"o{i}", medicationReference={"reference": ref}) for i, ref in enumerate(refs)
    ]
    orders[4]["contained"] = [_r("Medication", "m1", code={"text": "contained"})]
    orders.append(_r("MedicationRequest", "inline", medicationCodeableConcept={"text": "inline"}))
    orders.append(_r("MedicationRequest", "shown", medicationReference={"display": "only a display"}))
    built: list[object] = []
    real = ResourceIndex.__init__

    def counted(self: ResourceIndex, *args: object, **kwargs: object) -> None:
        built.append(self)
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    for resources in _records():
        expected = [_concept_by_index(order, resources) for order in orders]
        monkeypatch.setattr(ResourceIndex, "__init__", counted)
        got = [medication_concept(order, resources) for order in orders]
        monkeypatch.undo()
        assert built == []
        assert got == expected
        assert {"text": "inline"} in got and {"text": "only a display"} in got


def test_a_record_member_that_is_not_an_object_fails_the_look_up_as_the_index_did():
    import pytest

    from cds_engine.sources.fhir import medication_concept

    order = _r("MedicationRequest", "o", medicationReference={"reference": "Medication/m1"})
    for resources in ([_r("Medication", "m1"), "not an object"], ["not an object", _r("Medication", "m1")]):
        with pytest.raises(AttributeError):
            ResourceIndex(resources)
        with pytest.raises(AttributeError):
            medication_concept(order, resources)
