"""Alert-fatigue state is bounded in time: rows older than ``KEEP_DAYS`` are purged hourly, and
forgetting only ever makes a card show again (a shown-once mark or a window that is gone)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cds_engine.store import open_store
from cds_engine.store.fatigue import KEEP_DAYS, FatigueStore, purge_fatigue

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_old_fatigue_rows_are_purged_and_the_card_shows_again(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/f.db", spool_dir=tmp_path / "spool", start_drainer=False)
    try:
        fatigue = FatigueStore(store.engine)
        old = NOW - timedelta(days=KEEP_DAYS + 1)
        assert fatigue.first_display("scope-old", "BAC-M01.due", "h1", old)
        assert fatigue.first_display("scope-new", "BAC-M01.due", "h1", NOW)
        fatigue.remember_cards([{"card_uuid": "c-old", "pack_id": "baclofen", "tier_id": "BAC-M01.due",
                                 "suppress_key": "k", "client_key": "ck", "override_reasons": ["x"],
                                 "suppressed_by": None}], old)
        with store.engine.begin() as conn:
            assert purge_fatigue(conn, NOW) == 2
        assert fatigue.first_display("scope-old", "BAC-M01.due", "h1", NOW), "forgotten: shown again"
        assert not fatigue.first_display("scope-new", "BAC-M01.due", "h1", NOW), "kept: still shown once"
        assert fatigue.start_window("c-old", "x", "ck", NOW) == "not-suppressible"
    finally:
        store.close()


def test_a_replay_keeps_its_window_through_the_hourly_purge(tmp_path: Path) -> None:
    """``serve --fixed-clock``: rows are stamped by the replay clock, so the purge must age them by it.

    It aged them by the wall clock: ~2 s after start the first purge found every row of a replay
    (years "old") and deleted the window an override had just started — the next card showed again
    (the flaky tests/test_patient_view.py::test_repeat_suppression_both_orders_of_feedback).
    """
    from cds_engine.commands.serve import open_sink

    replay = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)  # years before the wall clock
    _sink, _routers, store = open_sink(f"sqlite:///{tmp_path}/r.db", lambda: None, tmp_path / "data",
                                       clock=lambda: replay)
    try:
        fatigue = FatigueStore(store.engine)
        fatigue.remember_cards([{"card_uuid": "c1", "pack_id": "baclofen", "tier_id": "BAC-R04.beers",
                                 "suppress_key": "k", "client_key": "ck", "override_reasons": ["x"],
                                 "suppressed_by": None}], replay)
        assert fatigue.start_window("c1", "x", "ck", replay) == "started"
        store.purge_expired()  # what the drainer thread runs hourly (first time ~2 s after start)
        assert fatigue.suppressing("k", replay, 60) is not None, "the replay's window survives the purge"
        later = replay + timedelta(days=KEEP_DAYS + 1)
        store.clock = lambda: later
        store.purge_expired()
        assert fatigue.start_window("c1", "x", "ck", later) == "not-suppressible", "old by the replay clock"
    finally:
        store.close()
