"""A real browser (Debian's chromium, driven by Playwright) against a real uvicorn process.

Signs in, filters, opens an alert, overrides it with a coded reason, and checks that the
decision is in the database and in the audit log, and that the rule analytics count it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from tests.service_helpers import wait_until_up

from cds_engine.engine import Engine
from cds_engine.sources.demographics import PatientDemographics
from cds_engine.store import open_store
from cds_engine.store import users as user_admin
from cds_engine.store.api import EvaluationRecord, IssuedAlert
from cds_engine.store.models import AlertRow, AuditEntry, ReviewDecision
from store_helpers import IN_CI, free_port

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
BULK_RULE = "BAC-D02"  # a warning (dose range) the seeded order raises
REPO = Path(__file__).resolve().parents[1]
PASSWORD = "browser-test-password"
SHOTS = REPO / "docs" / "screenshots"  # docs/review.md shows these; each test run retakes them
BASE_FACTS = {
    "age_years": 70, "weight_kg": 70,
    "renal": {"egfr": {"value": 25, "unit": "mL/min/{1.73_m2}", "date": "2025-02-20"}, "dialysis": "none"},
    "order": {"product": {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "617298",
                          "display": "Baclofen 20 MG Disintegrating Oral Tablet"},
              "form": "tablet", "route": "oral", "dose_amount": 20, "dose_unit": "mg", "doses_per_day": 3,
              "action": "new"},
}

XSS_TEXT = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'
XSS_DETAIL = ("**Bold** and _pack note_.\n\n" + XSS_TEXT + "\n\n[click](javascript:document.title='pwned')"
              "\n\n<iframe src=\"javascript:document.title='pwned'\"></iframe>")


def _seed(url: str, spool: Path, engine: Engine) -> None:
    store = open_store(url, spool_dir=spool, start_drainer=False)
    pack = engine.packs[0]
    now = datetime.now(UTC)
    try:
        with store.session() as db:
            user_admin.add_user(db, "rita", PASSWORD, "reviewer", actor="test")
        for day in range(4):
            as_of = now - timedelta(days=day)
            alerts = engine.evaluate({**BASE_FACTS, "as_of": as_of.isoformat()})
            for hook in ("order-select", "order-sign"):  # the same order seen twice
                store.sink.record_evaluation(EvaluationRecord(
                    source="hook", hook_instance=str(uuid.uuid4()), hook=hook, service_id=f"baclofen-{hook}",
                    patient_ref=f"Patient/{day}", order_key=f"MedicationRequest/{day}",
                    order=BASE_FACTS["order"],
                    as_of=as_of, pack_id=pack.id, pack_version=pack.version, pack_hash=pack.content_hash,
                    alerts=[IssuedAlert(alert=a, card_uuid=str(uuid.uuid4())) for a in alerts],
                    demographics=PatientDemographics(  # synthetic, as an EHR would send them
                        name=f"Test Patient {day}", birth_date=f"195{day}-0{day + 1}-1{day}",
                        identifiers=[("MRN", f"MRN-000{day}")])))
        # the red team's stored-XSS payloads, in the card detail, the evidence and the order
        hostile = alerts[0].model_copy(update={"rule_id": "XSS-T01", "detail": XSS_DETAIL,
                                               "evidence": {"egfr": XSS_TEXT}})
        store.sink.record_evaluation(EvaluationRecord(
            source="hook", hook_instance=str(uuid.uuid4()), hook="order-sign", patient_ref=XSS_TEXT,
            order={"resourceType": "MedicationRequest", "note": [{"text": XSS_TEXT}]}, as_of=now,
            pack_id=pack.id, pack_version=pack.version, pack_hash=pack.content_hash,
            alerts=[IssuedAlert(alert=hostile, card_uuid=str(uuid.uuid4()))]))
    finally:
        store.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> Iterator[tuple[str, str]]:
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail("/usr/bin/chromium is missing (apt-get install chromium); "
                        "CI may not skip browser tests")
        pytest.skip("/usr/bin/chromium not installed")
    workdir = tmp_path_factory.mktemp("review-browser")
    url = f"sqlite:///{workdir}/cds.db"
    _seed(url, workdir / "spool", engine)
    port = free_port()
    # the shipped packs allow no bulk action: a copy whose baclofen pack allows it for one
    # non-critical dose-range rule, so the bulk action can be driven in the browser
    rules = workdir / "rules"
    shutil.copytree(REPO / "rules", rules)
    with (rules / "baclofen" / "pack.yaml").open("a") as pack_file:
        pack_file.write(f"\nbulk_acknowledge: [{BULK_RULE}]\n")
    env = {**os.environ, "CDS_DATABASE_URL": url, "CDS_RULES_DIR": str(rules),
           "CDS_SPOOL_DIR": str(workdir / "spool")}
    log = open(workdir / "uvicorn.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "cds_engine.service.review.demo_app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, proc, path="/review/login", log=workdir / "uvicorn.log", timeout=60)
        yield base, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_sign_in_filter_open_override_in_a_real_browser(server: tuple[str, str]) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, url = server
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.goto(f"{base}/review/alerts")
            expect(page).to_have_url(f"{base}/review/login?next=%2Freview%2Falerts")
            page.screenshot(path=str(SHOTS / "review-login.png"), full_page=True)
            page.get_by_label("User name").fill("rita")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Alerts")).to_be_visible()
            # who the patient is, as the EHR sent it, beside the reference
            expect(page.locator("bdi.who-name").first).to_contain_text("Test Patient")
            page.screenshot(path=str(SHOTS / "review-alerts.png"), full_page=True)
            cookie = next(c for c in page.context.cookies() if c["name"] == "cds_review_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"

            page.locator("select[name=severity]").select_option("critical")
            page.locator("input[name=patient]").fill("Patient/2")
            page.get_by_role("button", name="Filter").click()
            expect(page).to_have_url(f"{base}/review/alerts?severity=critical&rule=&category=&status=&outcome="
                                     f"&source=&patient=Patient%2F2&from=&to=")
            rows = page.locator("tbody tr")
            assert rows.count() >= 1
            for sev in page.locator("tbody td.sev-critical, tbody td.sev-warning, tbody td.sev-info").all():
                assert sev.inner_text() == "critical"

            page.locator("tbody tr td a").first.click()
            expect(page.get_by_role("heading", name="Evidence")).to_be_visible()
            page.screenshot(path=str(SHOTS / "review-detail.png"), full_page=True)
            alert_id = page.url.rsplit("/", 1)[-1]
            page.get_by_label("Override reason").select_option("tolerated-before")
            page.locator("form:has(input[value=override]) textarea[name=comment]").fill("tolerated for years")
            page.get_by_role("button", name="Override").click()
            expect(page.get_by_role("status")).to_have_text("Decision saved.")
            expect(page.locator("#review-status")).to_have_text("overridden")

            page.get_by_role("link", name="Rule analytics").click()
            expect(page.locator("svg").first).to_be_visible()
            rule_id = page.locator("#rule-stats tr:has(td) >> nth=0").get_attribute("data-rule")
            assert rule_id
        finally:
            browser.close()

    store = open_store(url, start_drainer=False)
    try:
        with store.session() as db:
            alert = db.get(AlertRow, alert_id)
            assert alert is not None and alert.review_status == "overridden"
            decision = db.scalars(select(ReviewDecision).where(ReviewDecision.alert_id == alert_id)).one()
            assert (decision.decision, decision.reason_code, decision.comment) == (
                "overridden", "tolerated-before", "tolerated for years")
            entry = db.scalars(select(AuditEntry).where(AuditEntry.action == "alert.overridden")).one()
            assert (entry.actor, entry.role, entry.target_id) == ("rita", "reviewer", alert_id)
            assert entry.detail["reason"] == "tolerated-before"
            seen = set(db.scalars(select(AuditEntry.action).where(AuditEntry.actor == "rita")))
            assert {"login", "view.alerts", "view.alert", "view.analytics"} <= seen
            overridden_rule = alert.rule_id
    finally:
        store.close()
    # the analytics page (without a browser) counts the override once, against the right rule
    with httpx.Client(base_url=base) as client:
        form = client.get("/review/login")
        token = form.text.split('name="csrf_token" value="')[1].split('"')[0]
        client.post("/review/login", data={"username": "rita", "password": PASSWORD, "csrf_token": token})
        analytics = client.get("/review/analytics").text
    row = analytics.split(f'data-rule="{overridden_rule}"')[1].split("</tr>")[0]
    assert "1 (100%)" in row
    assert '<td>4</td><td>8</td>' in row  # 4 orders fired (seen twice each: 8 alert rows)


def test_alert_detail_renders_markdown_and_stored_xss_stays_inert(server: tuple[str, str]) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, url = server
    store = open_store(url, start_drainer=False)
    try:
        with store.session() as db:
            alert_id = db.scalars(select(AlertRow.id).where(AlertRow.rule_id == "XSS-T01")).one()
    finally:
        store.close()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(f"{base}/review/login?next=%2Freview%2Falerts%2F{alert_id}")
            page.get_by_label("User name").fill("rita")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Evidence")).to_be_visible()
            detail = page.locator(".card-detail")
            expect(detail.locator("strong")).to_have_text("Bold")  # markdown rendered
            assert "**" not in detail.inner_text()
            assert page.locator("main img, main script, main iframe, body img, body iframe").count() == 0
            assert page.locator(".card-detail a").count() == 0  # the javascript: link is not a link
            assert page.locator("details pre").is_hidden()  # the raw FHIR is folded away
            page.locator("details summary").click()
            expect(page.locator("details pre")).to_contain_text("MedicationRequest")
            page.goto(f"{base}/review/alerts?source=all")
            expect(page.get_by_role("heading", name="Alerts")).to_be_visible()
            assert page.title() != "pwned" and not dialogs
        finally:
            browser.close()


def test_work_queue_and_analytics_windows_in_a_real_browser(server: tuple[str, str]) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, _ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.goto(f"{base}/review/queue")
            page.get_by_label("User name").fill("rita")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Work queue")).to_be_visible()
            groups = page.locator("section.queue-group")
            assert groups.count() >= 4
            severities = [g.locator("h2 span").first.inner_text() for g in groups.all()]
            ranks = {"critical": 3, "warning": 2, "info": 1}
            assert [ranks[s] for s in severities] == sorted((ranks[s] for s in severities), reverse=True)
            # order-select and order-sign of one order are one item: two alerts folded into it
            folded = {int(t) for t in page.locator("section.queue-group td:nth-child(5)").all_inner_texts()
                      if t.strip().isdigit()}
            assert 2 in folded
            page.screenshot(path=str(SHOTS / "review-queue.png"), full_page=True)
            page.locator("section.queue-group a").first.click()
            expect(page.get_by_role("heading", name="Evidence")).to_be_visible()

            page.get_by_role("link", name="Rule analytics").click()
            page.locator("select[name=window]").select_option("30")
            page.get_by_role("button", name="Show").click()
            expect(page.locator("#analytics-range")).to_contain_text("last 30 days")
            year = str(datetime.now(UTC).year)
            expect(page.locator("#analytics-range")).to_contain_text(year)
            assert year in page.locator("svg").first.inner_html()  # full dates on the chart's axis
            page.screenshot(path=str(SHOTS / "review-analytics.png"), full_page=True)
        finally:
            browser.close()


def test_bulk_acknowledge_one_tier_in_a_real_browser(server: tuple[str, str]) -> None:
    """Runs last: it closes the seeded alerts of one tier. The button appears only on that tier's
    items (never a critical one); each alert gets its own audit row naming the bulk action."""
    from playwright.sync_api import expect, sync_playwright

    base, url = server
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.goto(f"{base}/review/queue")
            page.get_by_label("User name").fill("rita")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Work queue")).to_be_visible()
            buttons = page.get_by_role("button", name="Acknowledge all of this tier")
            assert buttons.count() >= 1
            tiers = set()
            for row in page.locator("tr:has(form.bulk)").all():
                tiers.add(row.get_attribute("data-tier") or "")
                assert row.locator("td").first.inner_text() != "critical"
            (tier,) = tiers  # one tier of the one rule the pack allows
            assert tier.startswith(f"{BULK_RULE}.")
            buttons.first.click()
            expect(page.get_by_role("status")).to_contain_text("alert(s) acknowledged")
            page.screenshot(path=str(SHOTS / "review-bulk.png"), full_page=True)
            assert page.get_by_role("button", name="Acknowledge all of this tier").count() == 0
        finally:
            browser.close()
    store = open_store(url, start_drainer=False)
    try:
        with store.session() as db:
            closed = db.scalars(select(AlertRow).where(AlertRow.tier_id == tier)).all()
            assert closed and all(a.review_status == "acknowledged" for a in closed)
            rows = db.scalars(select(AuditEntry).where(AuditEntry.action == "alert.acknowledged")).all()
            per_alert = [r for r in rows if r.detail.get("bulk_action")]
            assert sorted(r.target_id for r in per_alert) == sorted(a.id for a in closed)
            assert len({r.detail["bulk_action"] for r in per_alert}) == 1
    finally:
        store.close()
