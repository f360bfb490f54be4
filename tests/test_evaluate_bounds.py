"""/evaluate (plain JSON facts) is bounded and never evaluates on the event loop.

Found by the lead after the 2026-12-08 re-audit: every unknown coded entry of a ``PatientFacts`` body
is classified by its text (~0.4 ms each), and /evaluate ran applicability and evaluation inline on
the event loop — a 10 MB body of invented medicines and conditions was ~30 s of CPU during which no
other request (hooks, /healthz) was answered. Now every list of the body is bounded (413 naming the
list, before any derivation) and the work runs on a worker thread.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cds_engine.engine import Engine
from cds_engine.service import create_app
from cds_engine.service.limits import MAX_FACT_LIST_ITEMS
from conftest import REPO

T11 = REPO / "fixtures" / "baclofen" / "T11.json"
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"


def _facts() -> dict[str, Any]:
    return json.loads(T11.read_text())["facts"]


def _medicines(n: int) -> list[dict[str, Any]]:
    return [
        {"product": {"system": RX, "code": str(9_000_000 + i), "display": f"invented product {i}"}}
        for i in range(n)
    ]


@pytest.mark.parametrize("field", ["medications", "conditions"])
def test_a_list_over_the_bound_is_refused_naming_it(engine: Engine, field: str) -> None:
    body = _facts()
    if field == "medications":
        body["medications"] = _medicines(MAX_FACT_LIST_ITEMS + 1)
    else:
        body["conditions"] = [
            {"code": {"system": "http://snomed.info/sct", "code": str(8_000_000 + i)}}
            for i in range(MAX_FACT_LIST_ITEMS + 1)
        ]
    with TestClient(create_app(lambda: engine, auth=None)) as client:
        answer = client.post("/evaluate", json=body)
    assert answer.status_code == 413, answer.text
    assert field in answer.text and str(MAX_FACT_LIST_ITEMS) in answer.text


def test_a_list_at_the_bound_is_evaluated(engine: Engine) -> None:
    body = _facts()
    own = body.get("medications", [])
    body["medications"] = [*own, *_medicines(MAX_FACT_LIST_ITEMS - len(own))]
    with TestClient(create_app(lambda: engine, auth=None)) as client:
        answer = client.post("/evaluate", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-packs-evaluated"].startswith("baclofen")
    assert answer.json()  # T11's alerts are still there


def test_evaluation_runs_off_the_event_loop(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    original = engine.applicability

    def spy(facts: Any) -> Any:
        seen.append(threading.current_thread().name)
        return original(facts)

    monkeypatch.setattr(engine, "applicability", spy)
    with TestClient(create_app(lambda: engine, auth=None)) as client:
        loop_thread: list[str] = []

        @client.app.get("/__loop_thread")  # type: ignore[misc]
        async def loop_name() -> dict[str, str]:
            loop_thread.append(threading.current_thread().name)
            return {}

        client.get("/__loop_thread")
        assert client.post("/evaluate", json=_facts()).status_code == 200
    assert seen and loop_thread and seen[0] != loop_thread[0]
