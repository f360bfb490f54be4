"""Hot reload, site settings on alerts, and silent (draft) packs.

The holder must keep serving the last good engine across a broken pack (YAML error or a verifier
error), swap atomically to a good new version, react to file changes and SIGHUP, and expose the
rejected version's lint errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from cds_engine.engine import Engine
from cds_engine.facts.model import PatientFacts
from cds_engine.rules.errors import PackLoadError
from cds_engine.rules.governance import RUNNING_STATUSES, is_shown
from cds_engine.service.reload import EngineHolder
from conftest import REPO, RULES

FIXTURES = REPO / "fixtures"


def facts(pack: str, name: str) -> PatientFacts:
    return PatientFacts.model_validate(json.loads((FIXTURES / pack / name).read_text())["facts"])


def make_rules(tmp_path: Path, packs: tuple[str, ...]) -> Path:
    root = tmp_path / "rules"
    root.mkdir()
    shutil.copytree(RULES / "vocabulary", root / "vocabulary")
    for name in packs:
        (root / name).mkdir()
        shutil.copy(RULES / name / "pack.yaml", root / name / "pack.yaml")
    return root


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    # make the change visible to a stat()-based watcher even within one clock tick
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


@pytest.fixture
def gaba_dir(tmp_path: Path) -> Path:
    return make_rules(tmp_path, ("gabapentinoid",))


def max_param(holder: EngineHolder) -> float:
    return holder().packs[0].params["gabapentin_max_daily_mg"]


def test_reload_swaps_good_and_keeps_last_good_across_broken(gaba_dir):
    holder = EngineHolder(gaba_dir, evaluator="oracle")
    first = holder()
    assert isinstance(first, Engine) and max_param(holder) == 3600 and holder.last_error is None
    assert holder.check() is False  # nothing changed

    pack = gaba_dir / "gabapentinoid" / "pack.yaml"
    edit(pack, "gabapentin_max_daily_mg: {value: 3600,", "gabapentin_max_daily_mg: {value: 3000,")
    assert holder.check() is True
    second = holder()
    assert second is not first and max_param(holder) == 3000 and holder.generation == 1

    # 1. a YAML syntax error: rejected, the last good engine keeps serving, errors exposed with file:line
    edit(pack, "  title: Gabapentinoid medication safety\n", "  title: [Gabapentinoid\n")
    assert holder.check() is False
    assert holder() is second
    assert holder.last_error and holder.last_error[0].line is not None
    assert str(holder.last_error[0]).startswith(f"{pack}:")
    assert holder.history[-1].accepted is False

    # 2. valid YAML but a verifier error (a tier that can never fire): rejected too
    edit(pack, "  title: [Gabapentinoid\n", "  title: Gabapentinoid medication safety\n")
    edit(
        pack,
        "- {fact: daily_dose_mg, gt: {param: gabapentin_max_daily_mg}}",
        "- {all: [{fact: daily_dose_mg, gt: 5000}, {fact: daily_dose_mg, lt: 10}]}",
    )
    assert holder.check() is False and holder() is second
    assert any(f.rule_id == "GAB-D01" and "can never fire" in f.message for f in holder.last_error)

    # the broken engine never served: evaluation still works on the last good one
    alerts = holder().evaluate_pack(holder().packs[0], facts("gabapentinoid", "G-D01-fire-3900.json"))
    assert {a.rule_id for a in alerts} == {"GAB-D01"}

    # 3. fixed: accepted, error cleared
    edit(
        pack,
        "- {all: [{fact: daily_dose_mg, gt: 5000}, {fact: daily_dose_mg, lt: 10}]}",
        "- {fact: daily_dose_mg, gt: {param: gabapentin_max_daily_mg}}",
    )
    assert holder.check() is True and holder.last_error is None and max_param(holder) == 3000


def test_start_fails_without_a_good_version(gaba_dir):
    edit(gaba_dir / "gabapentinoid" / "pack.yaml", "severity: critical", "severity: fatal")
    with pytest.raises(PackLoadError) as info:
        EngineHolder(gaba_dir, evaluator="oracle")
    assert any(f.rule_id == "GAB-D01" for f in info.value.findings)


def test_watcher_thread_reloads_on_file_change(gaba_dir):
    events = []
    with EngineHolder(gaba_dir, evaluator="oracle", poll_seconds=0.05, on_reload=events.append) as holder:
        edit(
            gaba_dir / "gabapentinoid" / "pack.yaml",
            "gabapentin_max_daily_mg: {value: 3600,",
            "gabapentin_max_daily_mg: {value: 3200,",
        )
        deadline = time.monotonic() + 20
        while holder.generation == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert holder.generation == 1 and max_param(holder) == 3200
        assert events[-1].accepted and events[-1].reason == "file change"
    assert holder._thread is None  # stopped by the context manager


def test_sighup_reloads(gaba_dir):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    holder = EngineHolder(gaba_dir, evaluator="oracle")
    holder.install_sighup()
    try:
        edit(
            gaba_dir / "gabapentinoid" / "pack.yaml",
            "gabapentin_max_daily_mg: {value: 3600,",
            "gabapentin_max_daily_mg: {value: 3100,",
        )
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 10
        while holder.generation == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert holder.generation == 1 and max_param(holder) == 3100
        assert holder.history[-1].reason == "SIGHUP"
    finally:
        holder.uninstall_sighup()


def test_concurrent_readers_always_see_a_whole_engine(gaba_dir):
    holder = EngineHolder(gaba_dir, evaluator="oracle")
    patient = facts("gabapentinoid", "G-D01-fire-3900.json")
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                engine = holder()
                alerts = engine.evaluate_pack(engine.packs[0], patient)
                assert {a.rule_id for a in alerts} == {"GAB-D01"}
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    pack = gaba_dir / "gabapentinoid" / "pack.yaml"
    for value in (3500, 3400):
        edit(
            pack,
            "gabapentin_max_daily_mg: {value: " + str(value + 100) + ",",
            "gabapentin_max_daily_mg: {value: " + str(value) + ",",
        )
        assert holder.check()
    stop.set()
    for t in threads:
        t.join()
    assert not errors and holder.generation == 2


# ───────────────────────── site settings: overlay, hash on alerts, lint ─────────────────────────


def test_site_settings_overlay_and_hash_on_every_alert(gaba_dir):
    site = gaba_dir / "site.yaml"
    site.write_text(
        "site: {name: Test General}\npacks:\n  gabapentinoid:\n"
        "    gabapentin_max_daily_mg: {value: 3000, note: 'P&T 2026-01'}\n",
        encoding="utf-8",
    )
    digest = hashlib.sha256(site.read_bytes()).hexdigest()
    holder = EngineHolder(gaba_dir, evaluator="oracle")
    engine = holder()
    assert engine.site_hash == digest and max_param(holder) == 3000
    patient = facts("gabapentinoid", "G-D01-silent-3600.json")  # 3600 > 3000 under the site policy
    alerts = engine.evaluate_pack(engine.packs[0], patient)
    assert [a.rule_id for a in alerts] == ["GAB-D01"]
    assert all(a.site_hash == digest for a in alerts)
    # the same through Engine.from_dir (which finds DIR/site.yaml by itself)
    direct = Engine.from_dir(gaba_dir, evaluator="oracle", statuses=RUNNING_STATUSES)
    assert direct.site_hash == digest and {a.site_hash for a in direct.evaluate(patient)} == {digest}
    # an unknown parameter in the site file: the reload is refused with the site file's line
    site.write_text(site.read_text() + "    max_dayly_mg: 10\n", encoding="utf-8")
    assert holder.reload("test") is False
    (finding,) = holder.last_error
    assert finding.file == str(site) and finding.line == 5 and "max_dayly_mg" in finding.message
    with pytest.raises(PackLoadError):
        Engine.from_dir(gaba_dir)


def test_without_site_file_alerts_have_no_site_hash():
    engine = Engine.from_dir(RULES, evaluator="oracle")
    alerts = engine.evaluate(facts("baclofen", "T04.json"))
    assert alerts and all(a.site_hash is None for a in alerts)


# ───────────────────────── draft packs run silently ─────────────────────────


def test_draft_pack_alerts_are_stored_not_shown(tmp_path):
    root = make_rules(tmp_path, ("baclofen", "gabapentinoid"))
    holder = EngineHolder(root, evaluator="oracle")
    assert holder().statuses == RUNNING_STATUSES
    # gabapentin + pregabalin + baclofen: both packs review the gabapentin order
    patient = facts("gabapentinoid", "G-C02-fire-warning-baclofen-antihistamine.json")
    alerts = holder().evaluate(patient)
    by_pack = {a.pack_id for a in alerts}
    assert "gabapentinoid" in by_pack
    for alert in alerts:
        assert alert.pack_hash and alert.pack_status in ("active", "draft")
        assert is_shown(alert) == (alert.pack_status == "active")
    assert not any(is_shown(a) for a in alerts if a.pack_id == "gabapentinoid")
    # the default engine (what `check` and the cards use) does not run drafts at all
    assert not [
        a for a in Engine.from_dir(root, evaluator="oracle").evaluate(patient) if a.pack_id == "gabapentinoid"
    ]


def test_swapped_out_engine_is_freed_and_never_silent(tmp_path):
    """After a reload the old engine's rulesets are freed; a late request on it still gets alerts."""
    import shutil

    from cds_engine.facts.model import PatientFacts
    from cds_engine.service.reload import EngineHolder

    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    holder = EngineHolder(rules, site=False)
    holder.grace_seconds = 0.0
    old = holder()
    facts = PatientFacts.model_validate(
        {
            "as_of": "2026-01-15T12:00:00+00:00",
            "birth_date": "1980-01-01",
            "renal": {"egfr": {"value": 95, "date": "2026-01-10"}},
            "order": {
                "product": {"display": "baclofen 10 mg tablet"},
                "route": "oral",
                "dose_amount": 10,
                "dose_unit": "mg",
                "doses_per_day": 3,
                "action": "new",
                "indication_group": "spasticity",
            },
        }
    )
    before = {a.rule_id for a in old.evaluate(facts)}
    assert "BAC-D02" in before
    assert holder.reload("test")
    deadline = time.monotonic() + 5
    while old._created and time.monotonic() < deadline:
        time.sleep(0.05)
    assert old._created == []  # rulesets freed
    assert {a.rule_id for a in old.evaluate(facts)} == before  # answered by the oracle
    assert old.fallbacks >= 1
