"""Analytics you can trust (issue #18 item 5): windows 30/90/365/all with full dates; suggestion
acceptance only over shown cards that carried a suggestion; one row per missing-data item."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cds_engine.service.review.router import build_router
from cds_engine.store import Store
from cds_engine.store import users as user_admin
from cds_engine.store.api import EvaluationRecord, IssuedAlert
from cds_engine.store.queries import analytics
from store_helpers import STORE_KINDS, feedback, make_alert, make_record, store_for
from store_helpers import sign_in as shared_sign_in

PASSWORD = "correct-horse-battery"
TODAY = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0)


def _missing(item: str, title: str) -> object:
    return make_alert("missing-data", suggestions=False, category="missing-data").model_copy(
        update={"tier_id": f"missing-data.{item}", "title": title, "kind": "cannot-assess"})


def _record(alert: object, *, card_suggestions: int | None, shown: bool = True, order: str,
            days_ago: int = 0) -> EvaluationRecord:
    base = make_record(order_key=order, as_of=TODAY - timedelta(days=days_ago), alerts=[])
    issued = IssuedAlert(alert=alert, card_uuid=str(uuid.uuid4()), shown=shown,
                         card_suggestions=card_suggestions)
    return base.model_copy(update={"alerts": [issued]})


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with store_for(request.param, tmp_path) as s:
        yield s


def _feedback_all(store: Store, records: list[EvaluationRecord], outcome: str = "overridden") -> None:
    for r in records:
        store.sink.record_evaluation(r)
        store.sink.record_feedback(feedback(r.alerts[0].card_uuid or "", outcome))


def test_acceptance_counts_only_shown_cards_that_carried_a_suggestion(store: Store) -> None:
    # the rule offers a suggestion, but the first card went out without it (dropped as unsafe)
    alert = make_alert("TST-S01", suggestions=True)
    _feedback_all(store, [_record(alert, card_suggestions=0, order="o1")])
    accepted = _record(alert, card_suggestions=1, order="o2")
    store.sink.record_evaluation(accepted)
    store.sink.record_feedback(feedback(accepted.alerts[0].card_uuid or "", "accepted", accepted=["s1"]))
    _feedback_all(store, [_record(alert, card_suggestions=1, shown=False, order="o3")])  # silent mode
    with store.session() as db:
        (stats,) = analytics(db)
    assert stats.fired == 3 and stats.prescriber_decided == 3
    assert (stats.suggestions_accepted, stats.suggestions_decided) == (1, 1)


def test_one_row_per_missing_data_item_titled_per_item(store: Store) -> None:
    for n, (item, title) in enumerate([("egfr", "Cannot assess: Current eGFR"),
                                       ("dose_mg", "Cannot assess: Dose in mg"),
                                       ("egfr", "Cannot assess: Current eGFR")]):
        store.sink.record_evaluation(_record(_missing(item, title), card_suggestions=0, order=f"m{n}"))
    with store.session() as db:
        rows = {s.rule_id: s for s in analytics(db)}
        assert set(rows) == {"missing-data.egfr", "missing-data.dose_mg"}
        assert rows["missing-data.egfr"].title == "Cannot assess: Current eGFR"
        assert rows["missing-data.egfr"].fired == 2
        assert rows["missing-data.dose_mg"].title == "Cannot assess: Dose in mg"
        assert {s.rule_id for s in analytics(db, rule="missing-data.dose_mg")} == {"missing-data.dose_mg"}


@pytest.mark.parametrize(("window", "rules"), [("30", {"TST-D0"}), ("90", {"TST-D0", "TST-D40"}),
                                               ("365", {"TST-D0", "TST-D40", "TST-D200"}),
                                               ("all", {"TST-D0", "TST-D40", "TST-D200", "TST-D900"})])
def test_windows_with_full_dates(store: Store, window: str, rules: set[str]) -> None:
    for days in (0, 40, 200, 900):
        store.sink.record_evaluation(_record(make_alert(f"TST-D{days}"), card_suggestions=1, order=f"d{days}",
                                             days_ago=days))
    with store.session() as db:
        user_admin.add_user(db, "ann", PASSWORD, "reviewer", actor="test")
    app = FastAPI()
    app.include_router(build_router(store, lambda: None))  # titles from the stored alerts
    client = TestClient(app)
    shared_sign_in(client, "ann", PASSWORD)
    asked = datetime.now(UTC).date()  # the page's "today" is the day of the request: a run may cross midnight
    page = client.get("/review/analytics", params={"window": window}).text
    answered = datetime.now(UTC).date()
    table = page.split('id="rule-stats"')[1].split("</table>")[0]
    assert {r for r in ("TST-D0", "TST-D40", "TST-D200", "TST-D900") if f'data-rule="{r}"' in table} == rules
    shown_range = page.split('id="analytics-range"')[1].split("</p>")[0]

    def shown(today: date) -> str:
        days = int(window) - 1 if window != "all" else None
        first = today - timedelta(days=days) if days is not None else TODAY.date() - timedelta(days=900)
        return f"from {first.isoformat()} to {today.isoformat()}"

    assert shown(asked) in shown_range or shown(answered) in shown_range  # full dates, years included
    if window == "all":
        assert "The chart shows the last 366 days" in page
    chart_labels = page.split("<svg")[1].split("</svg>")[0]
    assert str(TODAY.year) in chart_labels
    assert "unknown window" in client.get("/review/analytics", params={"window": "7"}).text


def test_csv_export_is_neutralised_filtered_and_audited(store: Store) -> None:
    from sqlalchemy import select

    from cds_engine.store.models import AuditEntry

    hostile = make_alert("TST-F01").model_copy(update={"title": "=HYPERLINK(\"http://evil\")"})
    store.sink.record_evaluation(_record(hostile, card_suggestions=1, order="f1"))
    store.sink.record_evaluation(_record(make_alert("TST-OLD"), card_suggestions=1, order="f2", days_ago=100))
    store.sink.record_evaluation(_record(make_alert("TST-HYP"), card_suggestions=1, order="f3")
                                 .model_copy(update={"hypothetical": True}))
    with store.session() as db:
        user_admin.add_user(db, "ann", PASSWORD, "reviewer", actor="test")
    app = FastAPI()
    app.include_router(build_router(store, lambda: None))
    client = TestClient(app)
    shared_sign_in(client, "ann", PASSWORD)
    assert 'href="/review/analytics.csv?window=30"' in client.get("/review/analytics?window=30").text
    response = client.get("/review/analytics.csv", params={"window": "30"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    lines = response.text.splitlines()
    assert lines[0].startswith("rule,title,from,to,source,fired_orders")
    # neutralised; the 100-day-old and the hypothetical alert are outside the filter
    assert len(lines) == 2 and lines[1].startswith("TST-F01,\"'=HYPERLINK(")
    with store.session() as db:
        entry = db.scalars(select(AuditEntry).where(AuditEntry.action == "export.analytics")).one()
        assert entry.actor == "ann" and entry.detail["rows"] == 1
    anonymous = TestClient(app)
    assert anonymous.get("/review/analytics.csv", follow_redirects=False).status_code == 303  # sign in first
