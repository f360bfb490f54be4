"""Issue 19: cheaper reading of draft orders, same answers.

Drafts whose JSON content validated before skip the R4 model (a digest memo, successes only); the
tolerance fixes write into a copy of the parts they change, never into the request; a printable
ASCII name skips the per-character scan of ``clean_text``.
"""

from __future__ import annotations

import copy
import json
import unicodedata
from typing import Any

import pytest

from cds_engine.service import orders
from cds_engine.service.errors import HookError
from cds_engine.service.models import HookRequest
from cds_engine.sources.demographics import clean_text
from service_helpers import hook_request, medication_request


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every draft handed to the R4 model (the memo starts empty)."""
    seen: list[dict[str, Any]] = []
    real = orders.MedicationRequest.model_validate

    def counting(resource: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        seen.append(copy.deepcopy(resource))
        return real(resource, *args, **kwargs)

    monkeypatch.setattr(orders, "_valid", set())
    monkeypatch.setattr(orders.MedicationRequest, "model_validate", counting)
    return seen


def _request(*drafts: dict[str, Any]) -> HookRequest:
    return HookRequest.model_validate(json.loads(json.dumps(hook_request("order-sign", "p1", list(drafts)))))


def test_same_content_is_validated_once(validations: list[dict[str, Any]]) -> None:
    first = orders.read_draft_orders(_request(medication_request()))
    again = orders.read_draft_orders(_request(medication_request()))
    assert len(validations) == 1
    assert first.medication_requests == again.medication_requests


def test_other_content_is_validated_again(validations: list[dict[str, Any]]) -> None:
    orders.read_draft_orders(_request(medication_request(dose=10)))
    orders.read_draft_orders(_request(medication_request(dose=10.0)))  # 10.0 serialises apart from 10
    orders.read_draft_orders(_request(medication_request(dose=20)))
    assert len(validations) == 3


def test_an_invalid_draft_is_refused_every_time(validations: list[dict[str, Any]]) -> None:
    bad = medication_request(authoredOn="not a date")
    for _ in range(2):
        with pytest.raises(HookError) as refused:
            orders.read_draft_orders(_request(bad))
        assert refused.value.status == 400
        assert refused.value.field == "context.draftOrders.entry[0].resource.authoredOn"
    assert len(validations) == 2


def test_tolerated_deviations_leave_the_request_as_sent() -> None:
    draft = medication_request()
    del draft["intent"]
    draft["category"] = {"text": "inpatient"}
    draft["dosageInstruction"][0]["doseAndRate"] = draft["dosageInstruction"][0]["doseAndRate"][0]
    draft["dosageInstruction"].append({"timing": {"repeat": {"frequency": "often"}}})  # timing dropped
    request = _request(draft)
    sent = copy.deepcopy(request.context.draftOrders)
    read = orders.read_draft_orders(request).medication_requests[0]
    assert request.context.draftOrders == sent
    assert read["intent"] == "order" and read["category"] == [{"text": "inpatient"}]
    assert isinstance(read["dosageInstruction"][0]["doseAndRate"], list)
    assert read["dosageInstruction"][1] == {}


def _clean_by_scan(value: str, limit: int) -> str | None:
    kept = "".join(" " if ch in "\t\r\n" else ch for ch in value
                   if unicodedata.category(ch) not in ("Cf", "Cc", "Cs", "Co", "Cn") or ch in "\t\r\n")
    return " ".join(kept.split())[:limit] or None


@pytest.mark.parametrize(
    "value", ["Jane  Doe ", " ", "", "A\tB\r\nC", "x\x00y\x7f", "Zoë", "a\u202eb", "MRN-1"]
)
@pytest.mark.parametrize("limit", [200, 3])
def test_clean_text_fast_path_reads_as_the_scan(value: str, limit: int) -> None:
    assert clean_text(value, limit) == _clean_by_scan(value, limit)
