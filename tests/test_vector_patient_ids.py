"""vector_alerts with a mask: the table of the kept patients, named by their own ids.

Why a test of its own: the alert table's parts carry each alert's row position in the evaluated
frame (``__row``, numbered after the mask) through the take, the texts and the sort, and the
patient id is gathered by it at the end; with a mask the evaluated frame has fewer rows than the
input, so a position counted before the mask (or an input row looked up by it) hands alerts to the
wrong patients — only there. The other vector tests never pass a mask.
"""

from __future__ import annotations

import random
from typing import Any

import polars as pl
import pytest

from cds_engine.evaluators.vector import VectorPack, frame_from_flats, vector_alerts
from cds_engine.facts.derive import derive
from cds_engine.facts.model import PatientFacts
from cds_engine.synthetic import PatientGenerator


@pytest.fixture(scope="module")
def vp(pack) -> VectorPack:
    return VectorPack.compile(pack)


@pytest.fixture(scope="module")
def frame(pack, vp) -> pl.DataFrame:
    gen = PatientGenerator(pack.vocabulary, pack.context.drug_class)
    rng = random.Random(23)
    flats: list[dict[str, Any]] = [
        derive(PatientFacts.model_validate(gen.patient(rng)), pack.vocabulary, pack.context)
        for _ in range(400)
    ]
    ids = [f"p{(i * 7919) % 1000:03d}-{i}" for i in range(len(flats))]  # not in id order
    return frame_from_flats(vp, flats, {"patient_id": ids})


def _per_patient(table: pl.DataFrame) -> dict[str, pl.DataFrame]:
    parts = table.partition_by("patient_id", as_dict=True, maintain_order=True)
    return {str(key[0]): part for key, part in parts.items()}


def test_unmasked_rows_name_their_patients_in_frame_order(vp, frame):
    table = vector_alerts(vp, frame)
    assert table.height > frame.height  # several alerts per patient: the lookup is exercised
    seen = list(dict.fromkeys(table["patient_id"].to_list()))
    wanted = set(seen)
    assert seen == [p for p in frame["patient_id"].to_list() if p in wanted]


@pytest.mark.parametrize("keep", ["every third", "first and last", "none"])
def test_masked_table_is_the_full_table_of_the_kept_patients(vp, frame, keep):
    n = frame.height
    kept = {
        "every third": [i % 3 == 1 for i in range(n)],
        "first and last": [i in (0, n - 1) for i in range(n)],
        "none": [False] * n,
    }[keep]
    mask = pl.Series("mask", kept)
    masked = vector_alerts(vp, frame, mask=mask)
    full = vector_alerts(vp, frame)
    kept_ids = set(frame.filter(mask)["patient_id"].to_list())
    expected = full.filter(pl.col("patient_id").is_in(list(kept_ids)))
    assert masked.schema == full.schema
    assert masked.equals(expected)
    # and each patient's alerts are those of the same patient evaluated alone
    for patient, rows in list(_per_patient(masked).items())[:12]:
        alone = vector_alerts(vp, frame.filter(pl.col("patient_id") == patient))
        assert rows.equals(alone), patient
