"""The writer process reads an evaluation line's alert sources and suggestions as the plain dicts the
alert rows store (journal.py ``_LineAlert``), not as models it dumps again (issue 19 item 2a).

The rows must be the ones the in-process record gives, and the lighter reading must never accept
what the record's own model refuses: a line it does not take goes the former way (``json.loads``;
the record is validated, and refused, when it is written) — never written unvalidated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cds_engine.alerts import AlertSource, AlertSuggestion
from cds_engine.store.api import EvaluationRecord, IssuedAlert
from cds_engine.store.journal import decode_items
from cds_engine.store.journal_sink import evaluation_line
from cds_engine.store.writer import _alert_rows
from store_helpers import make_alert, make_record

ENTRY = {"type": "evaluation", "id": "e-1", "recorded_at": "2026-12-07T00:00:00+00:00"}


def _record() -> EvaluationRecord:
    plain = make_alert("TST-A01")
    rich = make_alert("TST-B02").model_copy(update={
        "suggestions": [AlertSuggestion(label="Stop – «now»", action="stop", dose_mg_per_day=None, note="n"),
                        AlertSuggestion(label="Halve", action="reduce-dose", dose_mg_per_day=12.5)],
        "sources": [AlertSource(id="S1", title="Label ü", url=None), AlertSource(id="S2", title="T")]})
    bare = make_alert("TST-C03", suggestions=False).model_copy(update={"sources": []})
    record = make_record(alerts=[])
    return record.model_copy(update={"alerts": [IssuedAlert(alert=a, card_uuid=f"c{n}")
                                                for n, a in enumerate([plain, rich, bare])]})


def _decoded(line: bytes) -> tuple[dict[str, Any], Any]:
    rejected: list[Any] = []
    items, count = decode_items(line + b"\n", Path("journal-x.jsonl"), 0, lambda e, x: rejected.append(e))
    assert count == 1 and not rejected and len(items) == 1
    return items[0]


def _rows(record: EvaluationRecord) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "id"} for row in _alert_rows(record, "e-1")]


def test_a_line_read_gives_the_rows_of_the_record_in_memory() -> None:
    record = _record()
    entry, value = _decoded(evaluation_line(ENTRY, record))
    assert isinstance(value, EvaluationRecord) and entry == ENTRY
    assert type(value.alerts[1].alert.sources[0]) is dict, "sources read as plain dicts"
    rows = _rows(value)
    assert rows == _rows(record)
    assert json.dumps(rows) == json.dumps(_rows(record)), "same key order, same values"
    assert rows[1]["suggestions"][1] == {"label": "Halve", "action": "reduce-dose", "dose_mg_per_day": 12.5,
                                         "note": None}


def test_a_whole_number_dose_is_stored_as_the_model_stores_it() -> None:
    line = evaluation_line(ENTRY, _record()).replace(b'"dose_mg_per_day":12.5', b'"dose_mg_per_day":12')
    _, value = _decoded(line)
    stored = _rows(value)[1]["suggestions"][1]["dose_mg_per_day"]
    assert stored == 12.0 and type(stored) is float


@pytest.mark.parametrize("change", [
    (b',"url":null}', b"}"),  # a default left out: the former way fills it in
    (b'"title":"T"', b'"title":5'),  # not a string: the model refuses it too
    (b'"action":"stop",', b""),  # a required key missing
    (b'"dose_mg_per_day":12.5', b'"dose_mg_per_day":"x"'),
])
def test_a_line_the_lighter_reading_does_not_take_goes_the_former_way(change: tuple[bytes, bytes]) -> None:
    line = evaluation_line(ENTRY, _record())
    assert line.count(change[0]) >= 1
    entry, value = _decoded(line.replace(change[0], change[1], 1))
    assert value is None, "not validated from the line: validated (or refused) when written"
    assert entry["type"] == "evaluation" and isinstance(entry["record"], dict)
