"""Build ``examples/synthea/``: a small, fixed set of Synthea patients plus two hand-made ones.

Run from the repository root: ``.venv/bin/python tools/make_examples.py [SHARED_SYNTHEA_DIR]``.
It reads the team's 300-patient Synthea sample (default ``../shared/data/synthea``) at build time
only; the copied files and the manifest are committed, so nothing at run time needs ``../shared``.

The Synthea patients are chosen so that, screened with ``--assume-order "baclofen 5 mg PO TID"
--as-of 2026-01-15``, each of the ten most common rules of the full-sample screen (R00, C05, R01,
C04, C01, S01, S02, S03, R04, R02) fires at least once, and so are the rarer P01 (pregnancy),
S04, C02, I02 and the missing-data report; plus a deceased patient (left out by ``screen``),
two low-risk controls and one non-patient bundle (hospital information, skipped). Synthea has no
dialysis and no intrathecal baclofen, and its eGFR results are years older than the as-of date, so
those patients (and a current eGFR < 30) are written here by hand.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "examples" / "synthea"
SMART = "smart-on-fhir_generated-sample-data/R4/SYNTHEA/"
EXF_NY = "exf-qicore-synthea-dataset/synthea_data_new_york/fhir/"
EXF_CA = "exf-qicore-synthea-dataset/synthea_data_california/fhir/"

# file (relative to the shared sample) -> why it is here
CHOSEN: dict[str, str] = {
    SMART + "Martina_Murazik_9e4fc9b4-aaad-4bcf-a24a-d665f3aa99ec.json.gz":
        "eGFR < 30 (R02), age/Beers (R04), S03, S04, C05",
    SMART + "Louis_Maggio_2e275d4b-855a-4eb2-9021-5410aa8acd4f.json.gz":
        "epilepsy (S01), sedatives (C02, C04)",
    SMART + "Dana_Feest_fc11f507-fd6d-4512-a77b-c997a24c5c10.json.gz": "child (I02)",
    SMART + "Laurie_McCullough_8a417ce8-b525-42ab-a2be-651291f73c8c.json.gz": "mild CKD (R01)",
    SMART + "Lemuel_Hodkiewicz_ece76cc5-d728-4ddd-a85d-a47de7d1649a.json.gz": "eGFR on file, C05",
    SMART + "Buster_Hoeger_ad2e3fc5-2b5d-4cb9-8d03-9ea0f4ac8423.json.gz": "control (no risk factor)",
    SMART + "Garrett_Thompson_5a72e290-8102-4c8a-84f7-f838387508b2.json.gz": "deceased (left out by screen)",
    EXF_NY + "7f10d43d-41a2-8166-5720-aff26c149cc9.json.gz":
        "pregnancy (P01, gestational age missing), opioid (C01)",
    EXF_NY + "d69f0917-eea1-af79-624f-1bd8b274b255.json.gz": "mood/substance use (S02), mild CKD (R01)",
    EXF_NY + "00310092-5c0e-34b2-4607-f7f730ec2866.json.gz": "mild CKD (R01), C05",
    EXF_NY + "f8446dc0-6b14-d4ee-5cc3-2c566456fe44.json.gz": "control (no risk factor)",
    EXF_CA + "48283fc4-addd-3f4d-7a42-e6e7cecd69f9.json.gz": "S02, eGFR on file",
    EXF_NY + "hospitalInformation1753719349370.json.gz":
        "non-patient bundle (organisations, skipped by screen)",
}

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource}


def _egfr(pid: str, oid: str, value: float, when: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": "33914-3",
                             "display": "Glomerular filtration rate/1.73 sq M.predicted"}]},
        "subject": {"reference": f"urn:uuid:{pid}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "mL/min/{1.73_m2}", "system": "http://unitsofmeasure.org",
                          "code": "mL/min/{1.73_m2}"},
    }


def _patient(pid: str, family: str, given: str, birth: str, gender: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": [given]}],
            "gender": gender, "birthDate": birth}


def hand_made() -> dict[str, dict[str, Any]]:
    """Three FHIR R4 transaction bundles written for this repository (not Synthea output)."""
    dialysis_id = "00000000-0000-4000-8000-00000000d1a1"
    dialysis = [
        _patient(dialysis_id, "Handmade", "Quorra", "1958-03-14", "male"),
        {"resourceType": "Condition", "id": "00000000-0000-4000-8000-00000000d1a2",
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        "code": "active"}]},
         "code": {"coding": [{"system": SNOMED, "code": "236435004",
                              "display": "End stage renal failure on dialysis (disorder)"}]},
         "subject": {"reference": f"urn:uuid:{dialysis_id}"}, "onsetDateTime": "2023-05-02"},
        {"resourceType": "Procedure", "id": "00000000-0000-4000-8000-00000000d1a3", "status": "completed",
         "code": {"coding": [{"system": SNOMED, "code": "233575001",
                              "display": "Intermittent hemodialysis (procedure)"}]},
         "subject": {"reference": f"urn:uuid:{dialysis_id}"},
         "performedDateTime": "2026-01-12T09:00:00+00:00"},
        _egfr(dialysis_id, "00000000-0000-4000-8000-00000000d1a4", 7, "2026-01-12T08:00:00+00:00"),
    ]
    it_id = "00000000-0000-4000-8000-0000000017a1"
    intrathecal = [
        _patient(it_id, "Handmade", "Ysolde", "1979-09-02", "female"),
        {"resourceType": "Condition", "id": "00000000-0000-4000-8000-0000000017a2",
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        "code": "active"}]},
         "code": {"coding": [{"system": SNOMED, "code": "698754002",
                              "display": "Chronic paralysis due to lesion of spinal cord"}]},
         "subject": {"reference": f"urn:uuid:{it_id}"}, "onsetDateTime": "2015-06-20"},
        {"resourceType": "MedicationRequest", "id": "00000000-0000-4000-8000-0000000017a3",
         "status": "active", "intent": "order",
         "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "1300890",
                                                   "display": "20 ML baclofen 1 MG/ML Injection"}]},
         "subject": {"reference": f"urn:uuid:{it_id}"}, "authoredOn": "2025-11-20T10:00:00+00:00",
         "dosageInstruction": [{
             "text": "300 mcg/day by intrathecal pump",
             "route": {"coding": [{"system": SNOMED, "code": "72607000", "display": "Intrathecal route"}]},
             "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
             "doseAndRate": [{"doseQuantity": {"value": 300, "unit": "mcg", "system": "http://unitsofmeasure.org",
                                               "code": "ug"}}]}]},
        _egfr(it_id, "00000000-0000-4000-8000-0000000017a4", 96, "2026-01-05T08:00:00+00:00"),
    ]
    ckd_id = "00000000-0000-4000-8000-00000000c4d1"
    severe_ckd = [  # Synthea's eGFR results are years older than the examples' as-of date
        _patient(ckd_id, "Handmade", "Brannoc", "1954-07-19", "female"),
        _egfr(ckd_id, "00000000-0000-4000-8000-00000000c4d2", 24, "2026-01-09T08:00:00+00:00"),
    ]
    return {
        "hand-made-egfr-24.json": {"resourceType": "Bundle", "type": "transaction",
                                   "entry": [_entry(r) for r in severe_ckd]},
        "hand-made-dialysis.json": {"resourceType": "Bundle", "type": "transaction",
                                    "entry": [_entry(r) for r in dialysis]},
        "hand-made-intrathecal-pump.json": {"resourceType": "Bundle", "type": "transaction",
                                            "entry": [_entry(r) for r in intrathecal]},
    }


def main(argv: list[str]) -> int:
    source = Path(argv[1]) if len(argv) > 1 else REPO.parent / "shared" / "data" / "synthea"
    if not (source / "manifest.csv").is_file():
        print(f"error: no Synthea sample at {source} (expected manifest.csv)", file=sys.stderr)
        return 2
    with (source / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = {r["file"]: r for r in reader}
    for rel in CHOSEN:
        target = OUT / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, target)
    with (OUT / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*fields, "why_chosen"], lineterminator="\n")
        writer.writeheader()
        for rel, why in CHOSEN.items():
            repo = "Exafluence-Inc/exf-qicore-synthea-dataset" if rel.startswith("exf") else ""
            path = rel.split("/", 1)[1].removesuffix(".gz")
            upstream = {"file": rel, "source_repo": repo, "source_path": path}
            writer.writerow({**rows.get(rel, upstream), "why_chosen": why})
    made = OUT / "hand-made"
    made.mkdir(parents=True, exist_ok=True)
    for name, bundle in hand_made().items():
        (made / name).write_text(json.dumps(bundle, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(CHOSEN)} Synthea files and {len(hand_made())} hand-made bundles to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
