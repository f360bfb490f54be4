"""A CSV/Parquet row means exactly what the equivalent PatientFacts means: same alerts.

The facts are written by hand here, independently of the table reader, and evaluated with
``Engine.evaluate`` (the per-patient path); the same patient written as a CSV row and as a
Parquet row is screened by the batch command. Also: the assumed-order parser.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from cds_engine.batch.order_text import OrderTextError, parse_order_text
from cds_engine.batch.runner import ScreenOptions, run_screen
from cds_engine.engine import Engine
from cds_engine.evaluators.vector import alerts_to_rows
from cds_engine.facts.model import PatientFacts
from conftest import RULES

AS_OF = "2026-01-15T12:00:00+00:00"
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"

ROWS = [
    {  # renal band S, opioid, epilepsy, new oral order 10 mg TID
        "patient_id": "r1",
        "birth_date": "1949-02-03",
        "sex": "female",
        "weight_kg": "61",
        "egfr": "24",
        "egfr_unit": "mL/min/{1.73_m2}",
        "egfr_date": "2026-01-02",
        "conditions": "snomed|84757009",
        "medications": f"{RX}|1049221;diphenhydramine",
        "order_product": f"{RX}|197391",
        "order_route": "PO",
        "order_dose_amount": "10",
        "order_dose_unit": "mg",
        "order_doses_per_day": "3",
        "order_indication_group": "spasticity",
        "monitoring.lft": "2024-05-01",
    },
    {  # eGFR reported as a bound, ongoing therapy being increased, no previous-dose record
        "patient_id": "r2",
        "birth_date": "1980-07-08",
        "sex": "male",
        "egfr": "60",
        "egfr_comparator": ">",
        "egfr_date": "2025-12-20",
        "order_product": "baclofen",
        "order_route": "oral",
        "order_dose_amount": "20",
        "order_dose_unit": "mg",
        "order_doses_per_day": "4",
        "order_action": "modify",
        "therapy_start": "2025-06-01",
        "last_dose_change": "2026-01-13",
    },
    {  # liquid in mL without a concentration, pregnant late, inpatient
        "patient_id": "r3",
        "birth_date": "1995-01-01",
        "sex": "female",
        "pregnant": "true",
        "gestational_age_weeks": "37",
        "inpatient": "yes",
        "admission_time": "2026-01-14T08:00:00Z",
        "order_product": "baclofen oral solution",
        "order_form": "solution",
        "order_route": "PO",
        "order_dose_amount": "5",
        "order_dose_unit": "mL",
        "order_doses_per_day": "3",
    },
]


def _facts(row_id: str) -> PatientFacts:
    """The same patients, written as PatientFacts by hand."""
    as_of = AS_OF
    if row_id == "r1":
        return PatientFacts.model_validate(
            {
                "as_of": as_of,
                "patient_id": "r1",
                "birth_date": "1949-02-03",
                "sex": "female",
                "weight_kg": 61,
                "renal": {
                    "egfr": {"value": 24, "unit": "mL/min/{1.73_m2}", "date": "2026-01-02T00:00:00+00:00"}
                },
                "conditions": [{"code": {"system": "snomed", "code": "84757009"}}],
                "medications": [
                    {"product": {"system": RX, "code": "1049221"}},
                    {"product": {"display": "diphenhydramine"}},
                ],
                "order": {
                    "product": {"system": RX, "code": "197391"},
                    "route": "PO",
                    "dose_amount": 10,
                    "dose_unit": "mg",
                    "doses_per_day": 3,
                    "indication_group": "spasticity",
                },
                "monitoring": {"lft": "2024-05-01"},
            }
        )
    if row_id == "r2":
        return PatientFacts.model_validate(
            {
                "as_of": as_of,
                "patient_id": "r2",
                "birth_date": "1980-07-08",
                "sex": "male",
                "renal": {"egfr": {"value": 60, "comparator": ">", "date": "2025-12-20T00:00:00+00:00"}},
                "order": {
                    "product": {"display": "baclofen"},
                    "route": "oral",
                    "dose_amount": 20,
                    "dose_unit": "mg",
                    "doses_per_day": 4,
                    "action": "modify",
                },
                "history": {"therapy_start": "2025-06-01", "last_dose_change": "2026-01-13"},
            }
        )
    return PatientFacts.model_validate(
        {
            "as_of": as_of,
            "patient_id": "r3",
            "birth_date": "1995-01-01",
            "sex": "female",
            "reproductive": {"pregnant": True, "gestational_age_weeks": 37},
            "encounter": {"inpatient": True, "admission_time": "2026-01-14T08:00:00+00:00"},
            "order": {
                "product": {"display": "baclofen oral solution"},
                "form": "solution",
                "route": "PO",
                "dose_amount": 5,
                "dose_unit": "mL",
                "doses_per_day": 3,
            },
        }
    )


def _key(row: dict) -> tuple:
    keep = ("patient_id", "kind", "rule_id", "tier_id", "severity", "summary", "missing", "not_assessed")
    return (*(row[k] for k in keep), json.dumps(json.loads(row["evidence"]), sort_keys=True))


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tables")
    columns = sorted({k for r in ROWS for k in r})
    frame = pl.DataFrame([{c: r.get(c, "") for c in columns} for r in ROWS])
    frame.write_csv(root / "patients.csv")
    (root / "pq").mkdir()
    frame.write_parquet(root / "pq" / "patients.parquet")
    return root


@pytest.mark.parametrize("engine_name", ["vector", "rete"])
@pytest.mark.parametrize("fmt", ["patients.csv", "pq/patients.parquet"])
def test_table_row_gives_the_alerts_of_the_equivalent_facts(tables, tmp_path, engine_name, fmt):
    engine = Engine.from_dir(RULES, evaluator="oracle")
    expected = {
        _key(r) for rid in ("r1", "r2", "r3") for r in alerts_to_rows(rid, engine.evaluate(_facts(rid)))
    }
    assert len(expected) > 5
    run_screen(
        ScreenOptions(
            inputs=[tables / fmt],
            out=tmp_path / "out",
            rules=RULES,
            as_of=AS_OF,
            engine=engine_name,
            progress=False,
        )
    )
    got = {_key(r) for r in pl.read_parquet(tmp_path / "out" / "alerts.parquet").to_dicts()}
    assert got == expected


def test_order_text_parser_is_generic(engine):
    vocab = engine.packs[0].vocabulary
    order = parse_order_text("baclofen 5 mg PO TID", vocab)
    assert (order.dose_amount, order.dose_unit, order.route, order.doses_per_day) == (5.0, "mg", "oral", 3.0)
    assert order.product.code and "baclofen" in vocab.classify(order.product, "drug_class")
    assert parse_order_text("baclofen 10mg po q8h prn", vocab).doses_per_day == 3.0
    assert parse_order_text("baclofen 10 mg tablet PO BID", vocab).product.code  # a listed product
    assert parse_order_text("oxycodone 5 mg PO Q6H", vocab).doses_per_day == 4.0
    with pytest.raises(OrderTextError, match="not in the vocabulary"):  # a typo must not screen as "0 alerts"
        parse_order_text("unknowndrug 5 mg PO daily", vocab)
    fhir = order.to_fhir()
    assert fhir["resourceType"] == "MedicationRequest" and fhir["status"] == "draft"
    for bad in ("", "5 mg", "baclofen PO TID", "baclofen 5 mg sideways"):
        with pytest.raises(OrderTextError):
            parse_order_text(bad, vocab)
