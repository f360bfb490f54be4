"""Issue 19 item 2a: patient-view hands a record to a journal sink on the event loop, as the order hooks do.

A ``nonblocking`` sink (the journal: one ``os.write`` to the page cache) used to cost every
patient-view record a hop to a worker thread and back; any other sink (a database transaction)
still runs on a store thread. The same record reaches the sink either way.
"""

from __future__ import annotations

import threading
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from tests.service_helpers import RecordingSink
from tests.test_patient_view import CLOCK, VIEW, record, view_request

from cds_engine.service import create_app
from cds_engine.store.api import EvaluationRecord


class ThreadSink(RecordingSink):
    """Records each evaluation and the thread it was handed over on."""

    def __init__(self, nonblocking: bool) -> None:
        super().__init__()
        self.nonblocking = nonblocking
        self.threads: list[str] = []

    def record_evaluation(self, record: EvaluationRecord) -> None:
        self.threads.append(threading.current_thread().name)
        super().record_evaluation(record)


@pytest.mark.parametrize("nonblocking", [True, False])
def test_patient_view_record_thread(engine, nonblocking: bool) -> None:
    sink = ThreadSink(nonblocking)
    app = create_app(lambda: engine, sink=sink, auth=None, clock=lambda: datetime.fromisoformat(CLOCK))
    with TestClient(app) as client:
        response = client.post(VIEW, json=view_request(record()))
        loop_thread = client.portal.call(lambda: threading.current_thread().name)  # type: ignore[union-attr]
    assert response.status_code == 200, response.text
    assert [c["source"]["topic"]["code"] for c in response.json()["cards"]] == ["monitoring-unchecked"]
    assert len(sink.evaluations) == 1 and sink.evaluations[0].source == "patient-view"
    assert [a.card_uuid for a in sink.evaluations[0].alerts] == [c["uuid"] for c in response.json()["cards"]]
    if nonblocking:
        assert sink.threads == [loop_thread]
    else:
        assert sink.threads != [loop_thread] and sink.threads[0].startswith("AnyIO worker thread")
