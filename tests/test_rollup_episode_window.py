"""The rollup's episodes against their definition (issue 19): each stored episode's sums, its latest
outcome and its latest reviewer decision must come out exactly as the episode is defined — through
the writer's merge, through :func:`rollup.touch` (feedback, decisions) and through
:func:`rollup.rebuild`, on SQLite and PostgreSQL.

``_episodes`` ranks each episode's rows twice (outcomes: newest first, no outcome last, then id;
decisions: decided rows first, newest first, then id) and groups them. A rewrite with one
whole-partition window for the sums and no GROUP BY (two SQLite sorts instead of three) was
measured and not kept (writer +0.7 % instructions a hook line); this test is the reference any
such rewrite must meet. The rows make a wrong order, tie-break or frame differ: several rows per
episode across calls, ties on outcome time and on review time (the id decides), the newest outcome
not on the first-written row, a suggestion accepted on a row that is not the latest outcome, a
reopened row with a newer review time than the decided one, episodes that differ only by source
kind or by a missing patient, a card kept back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from cds_engine.results import MISSING_DATA_RULE
from cds_engine.store import Store, rollup
from cds_engine.store.api import EvaluationRecord
from cds_engine.store.fatigue import fatigue_cards
from cds_engine.store.models import SEVERITIES, AlertRow, Evaluation
from cds_engine.store.rollup import rollup_episodes
from cds_engine.store.writer import insert_evaluations
from store_helpers import NOW, STORE_KINDS, make_alert, make_record, store_for

_RANK = {name: rank for rank, name in enumerate(SEVERITIES, start=1)}
_COLUMNS = [c.name for c in rollup_episodes.columns]


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with store_for(request.param, tmp_path) as s:
        yield s


def _records(tag: str, shift: int) -> list[EvaluationRecord]:
    made_count = iter(range(100))

    def record(seconds: int, severities: list[str], hypothetical: bool = False,
               **kwargs: Any) -> EvaluationRecord:
        alerts = [make_alert("TST-E01", severity, summary=f"{severity} at {seconds}",
                             suggestions=n % 2 == 0) for n, severity in enumerate(severities)]
        made = make_record(as_of=NOW + timedelta(seconds=seconds + shift), alerts=alerts,
                           hook_instance=f"{tag}-{next(made_count)}", **kwargs)
        return made.model_copy(update={"hypothetical": hypothetical})
    return [
        record(0, ["critical", "info", "warning"]),  # one call: three rows of one episode
        record(5, ["info"]),
        record(3, ["warning", "info"], source="evaluate"),  # same order and patient, another kind
        record(3, ["info", "warning"], hypothetical=True, source="evaluate"),
        record(9, ["warning"], order_key=None),  # no order: the alert is its own episode
        record(2, ["info", "critical"], patient="Patient/2", order_key="order-2"),
        record(7, ["info"], patient="Patient/2", order_key="order-2"),
        record(4, ["warning", "info"], order_key="order-3").model_copy(update={"patient_ref": None}),
    ]


def _expected(conn: Any) -> list[tuple[Any, ...]]:
    """The episode's definition, in Python: per (order, rule key, source kind, patient) — first
    seen day, greatest pack / kind / severity / title / shown / carried, row count, outcome and
    accepted of the row with the newest outcome (no outcome last, then id), decision of the row
    first by (decided, newest decision, id), cards kept back."""
    kept = set(conn.execute(select(fatigue_cards.c.card_uuid)
                            .where(fatigue_cards.c.suppressed_by.is_not(None))).scalars())
    alert = [AlertRow.id, AlertRow.rule_id, AlertRow.tier_id, AlertRow.pack_id, AlertRow.kind,
             AlertRow.severity, AlertRow.title, AlertRow.shown, AlertRow.card_suggestions,
             AlertRow.suggestions, AlertRow.card_uuid,
             AlertRow.prescriber_outcome, AlertRow.prescriber_outcome_at, AlertRow.suggestion_accepted,
             AlertRow.review_status, AlertRow.reviewed_at]
    rows = conn.execute(select(*alert, Evaluation.order_key, Evaluation.source, Evaluation.hypothetical,
                               Evaluation.patient_ref, Evaluation.as_of)
                        .join(Evaluation, AlertRow.evaluation_id == Evaluation.id)).all()
    episodes: dict[tuple[Any, ...], list[Any]] = {}
    for a in rows:
        src = "hypothetical" if a.hypothetical else a.source
        key = a.tier_id if a.rule_id == MISSING_DATA_RULE else a.rule_id
        episodes.setdefault((a.order_key or a.id, key, src, a.patient_ref or ""), []).append(a)

    def newest_first(moment: datetime | None) -> tuple[int, float]:
        return (1, 0.0) if moment is None else (0, -moment.timestamp())

    out = []
    for (o, k, src, p), members in episodes.items():
        alerts = members
        suggestions = [json.loads(s) if isinstance(s, str) else s for s in (a.suggestions for a in alerts)]
        carried = [bool(a.shown) and ((a.card_suggestions or 0) > 0 or
                                      (a.card_suggestions is None and len(s) > 0))
                   for a, s in zip(alerts, suggestions, strict=True)]
        by_outcome = min(alerts, key=lambda a: (*newest_first(a.prescriber_outcome_at), a.id))
        by_review = min(alerts, key=lambda a: (a.review_status == "open", *newest_first(a.reviewed_at), a.id))
        out.append((o, k, src, p, min(m.as_of for m in members).astimezone(UTC).date().isoformat(),
                    max(a.pack_id for a in alerts), max(a.kind for a in alerts),
                    max(_RANK.get(a.severity, 0) for a in alerts), max(a.title for a in alerts), len(alerts),
                    int(any(a.shown for a in alerts)), int(any(carried)), by_outcome.prescriber_outcome,
                    int(by_outcome.suggestion_accepted is True),
                    None if by_review.review_status == "open" else by_review.review_status,
                    sum(a.card_uuid in kept for a in alerts)))
    return sorted(out, key=repr)


def _stored(conn: Any) -> list[tuple[Any, ...]]:
    return sorted((tuple(str(v) if c == "day" else v for c, v in zip(_COLUMNS, r, strict=True))
                   for r in conn.execute(select(rollup_episodes))), key=repr)


def _decide(conn: Any) -> None:
    """Outcomes and decisions that need both orders: ties on time broken by id, the newest outcome
    on a later row, a decided row in the middle, an accepted suggestion on one row only."""
    ids = conn.execute(select(AlertRow.id, Evaluation.order_key, Evaluation.source, Evaluation.patient_ref,
                              Evaluation.hypothetical)
                       .join(Evaluation, AlertRow.evaluation_id == Evaluation.id)
                       .order_by(Evaluation.as_of, AlertRow.position)).all()
    hooked = [r.id for r in ids if r.patient_ref == "Patient/1" and r.order_key and r.source == "hook"]
    other = [r.id for r in ids if r.patient_ref == "Patient/2"]  # the writer stores keys hashed
    tie = NOW + timedelta(hours=1)
    for n, alert_id in enumerate(sorted(hooked[:3])):  # three outcomes at one time: the smallest id wins
        conn.execute(update(AlertRow).where(AlertRow.id == alert_id).values(
            prescriber_outcome="accepted" if n == 0 else "overridden", prescriber_outcome_at=tie,
            suggestion_accepted=n == 2))  # accepted on a row that does not win
    conn.execute(update(AlertRow).where(AlertRow.id == hooked[-1]).values(
        prescriber_outcome="accepted", prescriber_outcome_at=tie - timedelta(minutes=5),
        suggestion_accepted=True))
    for n, alert_id in enumerate(sorted(hooked[1:3])):  # two decisions at one time: the smallest id wins
        conn.execute(update(AlertRow).where(AlertRow.id == alert_id).values(
            review_status="acknowledged" if n == 0 else "overridden", reviewed_at=tie))
    conn.execute(update(AlertRow).where(AlertRow.id == other[1]).values(
        review_status="overridden", reviewed_at=tie - timedelta(days=1)))
    conn.execute(update(AlertRow).where(AlertRow.id == other[0]).values(
        reviewed_at=tie))  # reopened: an open row with a newer review time than the decided one
    conn.execute(update(AlertRow).where(AlertRow.id == other[-1]).values(
        prescriber_outcome="overridden", prescriber_outcome_at=tie, suggestion_accepted=True))
    card = conn.execute(select(AlertRow.card_uuid).where(AlertRow.id == hooked[0])).scalar_one()
    conn.execute(insert(fatigue_cards).values(
        card_uuid=card, suppressed_by="test", pack_id="test-pack", tier_id="TST-E01.main", suppress_key="s",
        client_key="c", override_reasons=[], recorded_at=NOW))
    rollup.touch(conn, {r.order_key or r.id for r in ids})


def test_episodes_need_both_windows(store: Store) -> None:
    with store.engine.begin() as conn:
        insert_evaluations(conn, [(r, f"ev-{n}", NOW) for n, r in enumerate(_records("first", 0))])
    with store.engine.begin() as conn:
        _decide(conn)
    with store.engine.begin() as conn:  # later calls merged into the episodes already stored
        insert_evaluations(conn, [(r, f"again-{n}", NOW) for n, r in enumerate(_records("again", 60))])
    with store.engine.connect() as conn:
        expected, stored = _expected(conn), _stored(conn)
    assert stored == expected
    assert max(row[9] for row in stored) > 3, "no episode spans calls: the test would prove nothing"
    assert {row[12] for row in stored} >= {"accepted", "overridden", None}
    assert {row[14] for row in stored} >= {"overridden", "acknowledged", None}
    assert any(row[15] for row in stored) and any(row[13] for row in stored)
    with store.engine.begin() as conn:  # the recompute gives the same
        rollup.rebuild(conn)
    with store.engine.connect() as conn:
        assert _stored(conn) == expected
