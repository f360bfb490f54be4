"""The speed-ups of the FHIR → facts mapping and of Bulk NDJSON partitions change no result (issue 20 item 4).

Each fast path is compared with the plain computation it replaces: memoised code classification
and date parsing, the observation read code-first, a partition whose lines of unread types are
written once per patient and whose resources are decoded patient by patient, and the pause of the
garbage collector around decoding (nested and concurrent pauses restore it once).
"""

from __future__ import annotations

import gc
import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from cds_engine.batch.inputs import plan_inputs
from cds_engine.sources import fhir_read
from cds_engine.sources.compressed import read_bundle_bytes
from cds_engine.sources.fhir import bundle_resources, facts_from_resources
from cds_engine.sources.ndjson import partition_export, read_partition
from cds_engine.sources.selective import collector_paused
from conftest import REPO

SYNTHEA = REPO / "examples" / "synthea"
AS_OF = datetime(2026, 1, 15, tzinfo=UTC)


def _shipped_resources() -> list[dict]:
    out: list[dict] = []
    for f in plan_inputs([SYNTHEA]).bundles:
        out += bundle_resources(json.loads(read_bundle_bytes(f)))
    return out


def test_coded_groups_equal_the_uncached_reading(pack):
    vocab = pack.vocabulary
    concepts = [r.get("code") for r in _shipped_resources() if r.get("resourceType") == "Observation"]
    concepts += [
        {"coding": [{"system": "http://loinc.org", "code": " 62238-1 "}]},
        {"coding": [{"system": "http://loinc.org", "code": "62238-1", "display": "x"}], "text": "eGFR"},
        {"system": "http://loinc.org", "code": "33914-3"},  # a bare Coding
        {"text": "creatinine clearance"},
        {"coding": "not a list"},
        None,
        "text",
    ]
    assert len(concepts) > 100
    for concept in concepts * 2:  # the second round from the memo
        assert fhir_read.coded_groups(concept, vocab, "observation") == fhir_read._coded_groups(
            concept, vocab, "observation"
        )


def test_code_groups_of_odd_members_fail_as_coding_does(pack):
    with pytest.raises(ValidationError):
        fhir_read.code_groups(123, "x", pack.vocabulary, "observation")
    with pytest.raises(ValidationError):
        fhir_read.coded_groups({"coding": [{"system": "s", "code": 5}]}, pack.vocabulary, "observation")


@pytest.mark.parametrize(
    "value",
    ["2024-03-01", "2024-03", "2024", "2024-03-01T10:00:00Z", "2024-03-01T10:00:00+02:00",
     "2024-03-01T10:00:00", " 2024-03-01 ", "", "nonsense", "2024-13-01", None, 5],
)
def test_parse_datetime_memo_is_the_parse(value):
    assert fhir_read.parse_datetime(value) == fhir_read._parse_datetime(value)
    assert fhir_read.parse_datetime(value) == fhir_read._parse_datetime(value)  # from the memo


def _observation(**extra) -> dict:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": 123, "code": "62238-1"}]},  # a system that is not a string
        **extra,
    }


def test_unreadable_observation_code_fails_only_where_its_date_counts(pack):
    patient = {"resourceType": "Patient", "id": "p", "birthDate": "1950-01-01"}
    kw = {"as_of": AS_OF, "vocab": pack.vocabulary, "drug_class": pack.context.drug_class}
    facts_from_resources([patient, _observation()], **kw)  # no date: never counted, never classified
    facts_from_resources([patient, _observation(effectiveDateTime="2030-01-01")], **kw)  # after as_of
    with pytest.raises(ValidationError):
        facts_from_resources([patient, _observation(effectiveDateTime="2025-01-01")], **kw)


def _line(resource: dict) -> str:
    return json.dumps(resource) + "\n"


def test_partition_marks_unread_types_once_per_patient(tmp_path: Path):
    export = tmp_path / "export"
    export.mkdir()
    claims = [
        {"resourceType": "Claim", "id": f"c{i}", "patient": {"reference": f"Patient/{who}"}}
        for i, who in enumerate(["a", "ghost", "a", "ghost", "a"])
    ]
    (export / "Claim.ndjson").write_text("".join(map(_line, claims)))
    (export / "Patient.ndjson").write_text(_line({"resourceType": "Patient", "id": "a"}))
    (export / "Observation.ndjson").write_text(
        _line({"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/a"}})
    )
    result = partition_export(sorted(export.iterdir()), tmp_path / "parts", 1)
    lines = result.parts[0].read_text().splitlines()
    markers = [json.loads(x.split("\t")[0]) for x in lines if x.endswith("\t")]
    assert [m[3] for m in markers] == ["a", "ghost"]  # the first Claim of each, no more
    assert [m[1] for m in markers] == [1, 2]
    groups = {key: (file, n, [r["id"] for r in res]) for key, file, n, res in read_partition(
        result.parts[0], result.shared)}
    assert list(groups) == ["a", "ghost"]  # first seen first, as before
    assert groups["a"][1:] == (1, ["o", "a"])  # the Patient's line; the resources read, in file order
    assert groups["ghost"] == (str(export / "Claim.ndjson"), -1, [])  # rejected, where first seen


def test_collector_pause_nests_and_restores_once():
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # it was off before: left off
    finally:
        gc.enable()


def test_collector_pause_across_threads():
    start = threading.Barrier(4)

    def work() -> None:
        start.wait()
        for _ in range(200):
            with collector_paused():
                json.loads('{"a": [1, 2, {"b": 3}]}')

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gc.isenabled()


def test_patient_id_with_a_lone_surrogate_is_partitioned_not_fatal(tmp_path: Path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "Claim.ndjson").write_text(
        '{"resourceType": "Claim", "id": "c", "patient": {"reference": "Patient/\\ud800x"}}\n'
    )
    result = partition_export(sorted(export.iterdir()), tmp_path / "parts", 2)
    found = [(key, n) for part in result.parts for key, _f, n, _r in read_partition(part, result.shared)]
    assert found == [("\ud800x", -1)]  # a patient with no Patient record: rejected, not a crash
