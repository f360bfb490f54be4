"""Queries the review pages run on every view, rewritten for a large store (issue #18 item 6):
the drop-downs' distinct values by a loose index scan, and the queue's page and group count in
one statement. Same answers as before, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cds_engine.store import Store
from cds_engine.store.models import Evaluation
from cds_engine.store.queries import distinct_values
from cds_engine.store.work_queue import work_queue
from store_helpers import STORE_KINDS, make_alert, make_record, store_for


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with store_for(request.param, tmp_path) as s:
        yield s


def test_distinct_values_by_loose_index_scan(store: Store) -> None:
    with store.session() as db:
        assert distinct_values(db) == {"rules": [], "categories": []}
    for n, (rule, category) in enumerate([("TST-B02", "renal"), ("TST-A01", "allergy"), ("TST-B02", "renal"),
                                          ("TST-C03", "dose-range"), ("TST-A01", "allergy")]):
        store.sink.record_evaluation(make_record(patient=f"Patient/{n}", order_key=f"o{n}",
                                                 alerts=[make_alert(rule, category=category)]))
    with store.session() as db:
        assert distinct_values(db) == {"rules": ["TST-A01", "TST-B02", "TST-C03"],
                                       "categories": ["allergy", "dose-range", "renal"]}


def test_queue_counts_groups_on_every_page_and_past_the_last(store: Store) -> None:
    for n in range(7):
        store.sink.record_evaluation(make_record(patient=f"Patient/{n}", order_key=f"o{n}"))
    real = [Evaluation.hypothetical.is_(False)]
    with store.session() as db:
        pages = [work_queue(db, real, page=p, page_size=3) for p in (1, 2, 3, 4)]
    assert [len(groups) for groups, _ in pages] == [3, 3, 1, 0]
    assert {total for _, total in pages} == {7}
    seen = [g.patient_ref for groups, _ in pages for g in groups]
    assert sorted(seen) == sorted(f"Patient/{n}" for n in range(7))  # each group on exactly one page
