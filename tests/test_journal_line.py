"""Issue 19 item 2a: the journal line of an evaluation is built cheaper, never differently.

``JournalSink.record_evaluation`` used to write ``json.dumps(entry)`` with the record's
``model_dump_json()`` spliced in; it now formats the head and takes pydantic-core's bytes directly
(:func:`cds_engine.store.journal_sink.evaluation_line`). The writer process, the tail and every
replay read these lines, so each must be byte for byte the old one: here for records with None
fields, every kind of text JSON escapes, non-ASCII, odd floats and a large order.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from cds_engine.alerts import Alert
from cds_engine.sources.demographics import PatientDemographics
from cds_engine.store.api import EvaluationRecord, IssuedAlert
from cds_engine.store.db import utcnow
from cds_engine.store.journal import decode_items
from cds_engine.store.journal_sink import JournalSink, evaluation_line
from store_helpers import NOW, make_alert, make_record

ODD_TEXT = ('quote " backslash \\ slash / tab \t newline \n cr \r nul \x00 bell \x07 del \x7f '
            'é ≥ 中文 🙂 \u2028')


def _old_line(entry: dict[str, Any], record: EvaluationRecord) -> bytes:
    """The line as ``JournalSink.record_evaluation`` wrote it before issue 19 item 2a."""
    head = json.dumps(entry, separators=(",", ":"))[:-1].encode()
    return head + b',"record":' + record.model_dump_json().encode() + b"}"


def _odd_alert(text: str) -> Alert:
    return make_alert().model_copy(update={
        "title": text, "detail": text * 3, "summary": text[:100],
        "evidence": {"tiny": 1e-7, "huge": 1e16, "neg": -0.0, "nan": float("nan"), "inf": float("inf"),
                     "big_int": 2**70, "none": None, "list": [1, "ü", None, {"k": text}], "bool": True,
                     text: text},
        "missing": [text, ""], "not_assessed": ["x"], "site_hash": "a" * 64})


def _records() -> list[EvaluationRecord]:
    bare = EvaluationRecord(source="batch", as_of=datetime(2026, 1, 2, 3, 4, 5),  # naive, every optional None
                            pack_id="p", pack_version="1", pack_hash="h")
    odd = make_record(alerts=[_odd_alert(ODD_TEXT), make_alert("TST-R02", "critical", suggestions=False)])
    odd = odd.model_copy(update={
        "order": {"resourceType": "MedicationRequest", "note": [{"text": ODD_TEXT}], "dose": 2.5, "n": None},
        "encounter_ref": "Encounter/é", "user_ref": ODD_TEXT, "site_hash": "b" * 64, "batch_run_id": "run-1",
        "hypothetical": True,
        "as_of": datetime(2026, 12, 6, 20, 0, 0, 123456, tzinfo=timezone(timedelta(hours=-5))),
        "demographics": PatientDemographics(name=ODD_TEXT, birth_date="1950", identifiers=[("MRN", "ü-1")]),
        "alerts": [IssuedAlert(alert=_odd_alert(ODD_TEXT), card_uuid=str(uuid.uuid4()), shown=False,
                               card_suggestions=3),
                   IssuedAlert(alert=make_alert(), card_uuid=None, card_suggestions=None)]})
    large = make_record(alerts=[_odd_alert("é" * 5000 + str(n)) for n in range(20)])
    large = large.model_copy(update={"order": {f"key-{n}": ["ä" * 50, n, n / 7] for n in range(3000)}})
    empty_demographics = make_record(alerts=[]).model_copy(update={"demographics": PatientDemographics()})
    return [bare, make_record(), odd, large, empty_demographics,
            make_record(source="patient-view", hook="patient-view", order_key=None, as_of=NOW)]


class _CapturingJournal:
    """Enough of :class:`~cds_engine.store.journal.Journal` for the sink: keeps what it is given."""

    external = True

    def __init__(self) -> None:
        self.appended: list[tuple[dict[str, Any], Any, bytes | None]] = []

    def append(self, entry: dict[str, Any], value: Any = None, line: bytes | None = None) -> Path:
        self.appended.append((entry, value, line))
        return Path("journal-test-000001.jsonl")


@pytest.mark.parametrize("index", range(len(_records())))
def test_evaluation_line_is_the_old_line_byte_for_byte(index: int) -> None:
    record = _records()[index]
    entry = {"type": "evaluation", "id": str(uuid.uuid4()), "recorded_at": utcnow().isoformat()}
    assert evaluation_line(entry, record) == _old_line(entry, record)


def test_the_sink_appends_the_old_line_and_the_tail_reads_it_back() -> None:
    journal = _CapturingJournal()
    sink = JournalSink(None, journal, None)  # type: ignore[arg-type]
    records = _records()
    for record in records:
        sink.record_evaluation(record)
    assert len(journal.appended) == len(records)
    rejected: list[Any] = []
    for record, (entry, value, line) in zip(records, journal.appended, strict=True):
        assert value is record
        assert line == _old_line(entry, record)
        assert set(entry) == {"type", "id", "recorded_at"} and entry["type"] == "evaluation"
        (parsed_entry, parsed), = decode_items(line, Path("j.jsonl"), 0, lambda e, x: rejected.append(x))[0]
        assert parsed_entry == entry
        assert parsed is not None and parsed.model_dump_json() == record.model_dump_json()
    assert not rejected
