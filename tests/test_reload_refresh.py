"""``EngineHolder.refresh``: what a spare ``serve --workers N`` worker runs before it takes a dead
worker's place — its packs must be as current as the files (or, with a pack broken on disk, the last
good ones, as in every live worker), never older than what a live worker serves.
"""

from __future__ import annotations

import gc
import signal
from pathlib import Path

from cds_engine.service.reload import EngineHolder, sighup_holder
from test_reload import edit, make_rules, max_param


def test_refresh_reloads_only_what_changed_and_keeps_the_last_good(tmp_path: Path) -> None:
    rules = make_rules(tmp_path, ("gabapentinoid",))
    pack = rules / "gabapentinoid" / "pack.yaml"
    holder = EngineHolder(rules, poll_seconds=3600)  # no watcher: refresh alone must notice
    assert holder.refresh() is False and holder.generation == 0

    edit(pack, "gabapentin_max_daily_mg: {value: 3600", "gabapentin_max_daily_mg: {value: 3000")
    assert holder.refresh() is True
    assert holder.generation == 1 and max_param(holder) == 3000
    assert holder.refresh() is False  # nothing changed since

    edit(pack, "  version: 0.2.0", "  version: [0.2.0")  # broken on disk
    engine = holder()
    assert holder.refresh() is False
    assert holder() is engine and holder.last_error  # the last good engine, refusal recorded
    assert holder.history[-1].reason.startswith("refresh")


def test_a_sighup_not_yet_handled_by_the_watcher_is_honoured_by_refresh(tmp_path: Path) -> None:
    rules = make_rules(tmp_path, ("gabapentinoid",))
    holder = EngineHolder(rules, poll_seconds=3600)
    holder._wake.set()  # what the SIGHUP handler does while the watcher thread runs
    assert holder.refresh() is True and holder.generation == 1
    assert "SIGHUP pending" in holder.history[-1].reason


def test_the_sighup_holder_is_the_one_installed_and_not_kept_alive(tmp_path: Path) -> None:
    rules = make_rules(tmp_path, ("gabapentinoid",))
    previous = signal.getsignal(signal.SIGHUP)
    holder = EngineHolder(rules, poll_seconds=3600)
    try:
        holder.install_sighup()
        assert sighup_holder() is holder
        holder.uninstall_sighup()
        assert sighup_holder() is None
        holder.install_sighup()
        signal.signal(signal.SIGHUP, previous)  # as if the process went on without uninstalling
        holder._previous_handler = None
        del holder
        gc.collect()
        assert sighup_holder() is None  # weak: a test runner building many holders frees them
    finally:
        signal.signal(signal.SIGHUP, previous)
