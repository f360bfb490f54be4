"""The review pages at scale (issue #18 item 6): PostgreSQL filled with 1,000,000 alerts.

Run: ``CDS_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python bench/review.py
[--alerts 1000000] [--requests 50] [--explain] [--smoke]``.

A fresh database ``cds_test_*`` on that server (created and dropped here, as the tests do) is
migrated by the real store, then filled in SQL with ``INSERT … SELECT … generate_series`` (no
row goes through Python): half as many evaluations as alerts (two alerts each), 5 % of the
alerts open, 30 % of the hook alerts with a prescriber outcome and one ``prescriber_feedback``
row each, the rest closed by a reviewer; 70 % hook calls (order-select and order-sign pairs of one
order), 25 % batch screening, 5 % hypothetical; 50,000 patients, 20 rules, as-of times spread
over the last two years. Then ``ANALYZE``.

A real ``cds-engine serve`` (uvicorn, ``--no-auth``) is started on that database; one signed-in
reviewer asks each page ``--requests`` times in a row (concurrency 1) after 3 warm-up requests
(warm cache), full HTTP round trip: the default queue; the queue filtered by rule and by
source; the alert list filtered by patient; analytics at 30 / 90 / 365 days and all; the
analytics CSV export; the alert list's CSV export (10,000 rows). Goal: p95 ≤ 300 ms each.
``--explain`` prints EXPLAIN ANALYZE of the queue, analytics and export queries. Rows filled in SQL
bypass the writer, so the fill ends by rebuilding the analytics rollup and the queue items from the
rows (store/rollup.py, store/queue_items.py), as their migrations' backfill does. The load
generator shares the cores with the server and PostgreSQL. Not a test; ``--smoke`` (2,000 alerts,
2 requests) only proves the script runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from bench_common import machine_header, use_repo_paths

use_repo_paths()

from sqlalchemy import create_engine, text  # noqa: E402
from tests.service_helpers import REPO, serve_process  # noqa: E402

from cds_engine.store import open_store  # noqa: E402
from cds_engine.store import users as user_admin  # noqa: E402
from cds_engine.store.db import resolve_url  # noqa: E402
from cds_engine.store.queue_items import rebuild_queue  # noqa: E402
from cds_engine.store.rollup import rebuild  # noqa: E402
from store_helpers import csrf_of, postgres_database  # noqa: E402

PATIENTS = 50_000
RULES = [f"BNC-{c}{n:02d}" for c in "DRCSM" for n in range(1, 5)]  # 20 synthetic rule ids
PASSWORD = "bench-password-long"
GOAL_MS = 300.0

FILL = """
INSERT INTO evaluations (id, source, hook_instance, dedup_key, hook, service_id, patient_ref, encounter_ref,
    user_ref, order_key, order_base, as_of, recorded_at, pack_id, pack_version, pack_hash, site_hash,
    batch_run_id, hypothetical)
SELECT 'e' || g,
       CASE WHEN g % 20 < 14 THEN 'hook' ELSE 'batch' END,
       NULL, NULL,
       CASE WHEN g % 20 >= 14 THEN NULL WHEN g % 2 = 0 THEN 'order-select' ELSE 'order-sign' END,
       NULL,
       'Patient/p' || ((g / 2) % :patients),
       'Encounter/' || ((g / 2) % :patients) || '-' || (g / 200000),
       NULL,
       'ok' || (g / 2), 'ob' || (g / 2),
       now() - (((g / 2) * 7919) % (730 * 1440)) * interval '1 minute' + (g % 2) * interval '1 minute',
       now(), 'bench-pack', '1.0.0', repeat('f', 64), NULL, NULL,
       g % 20 = 19
FROM generate_series(1, :evaluations) AS g;

INSERT INTO alerts (id, evaluation_id, position, kind, rule_id, tier_id, title, category, severity, summary,
    detail, evidence, missing, not_assessed, suggestions, sources, pack_id, pack_version, pack_hash, pack_url,
    approval, card_uuid, shown, card_suggestions, prescriber_outcome, prescriber_outcome_at,
    suggestion_accepted, review_status, reviewed_at, reviewed_by)
SELECT 'a' || g || '-' || pos, 'e' || g, pos, 'rule', r.rule, r.rule || '.main', 'Rule ' || r.rule,
       'dose-range',
       CASE WHEN h % 10 = 0 THEN 'critical' WHEN h % 10 < 6 THEN 'warning' ELSE 'info' END,
       'Check the dose of the order', 'Detail with **markdown**.', '{"daily_dose_mg": 60}'::jsonb,
       '[]'::jsonb, '[]'::jsonb, '[]'::jsonb, '[]'::jsonb, 'bench-pack', '1.0.0', repeat('f', 64), NULL,
       'approved', 'c' || g || '-' || pos, true, h % 2,
       CASE WHEN g % 20 < 14 AND h % 10 < 3 THEN (CASE WHEN h % 3 = 0 THEN 'accepted' ELSE 'overridden' END)
       END,
       CASE WHEN g % 20 < 14 AND h % 10 < 3 THEN now() END,
       CASE WHEN g % 20 < 14 AND h % 10 < 3 THEN h % 3 = 0 END,
       CASE WHEN h % 100 < 5 THEN 'open' ELSE 'acknowledged' END,
       CASE WHEN h % 100 < 5 THEN NULL ELSE now() END,
       CASE WHEN h % 100 < 5 THEN NULL ELSE :reviewer END
FROM generate_series(1, :evaluations) AS g
CROSS JOIN generate_series(0, 1) AS pos
CROSS JOIN LATERAL (SELECT ((g * 2 + pos) * 2654435761) % 1000003 AS h) AS hh
CROSS JOIN LATERAL (SELECT (ARRAY[RULE_LIST])[1 + (g + pos * 7) % N_RULES] AS rule) AS r;

INSERT INTO prescriber_feedback (id, alert_id, card_uuid, service_id, outcome, accepted_suggestions,
    override_reason_code, override_reason_display, comment, user_id, outcome_timestamp, received_at)
SELECT 'f' || a.id, a.id, a.card_uuid, 'bench-order-sign', a.prescriber_outcome, '[]'::jsonb,
       CASE WHEN a.prescriber_outcome = 'overridden' THEN 'reason-' || (length(a.id) % 4) END,
       CASE WHEN a.prescriber_outcome = 'overridden' THEN 'Reason ' || (length(a.id) % 4) END,
       NULL, NULL, a.prescriber_outcome_at, now()
FROM alerts AS a WHERE a.prescriber_outcome IS NOT NULL;
"""

PAGES = [
    ("queue, default", "/review/queue"),
    ("queue, by rule", f"/review/queue?rule={RULES[3]}"),
    ("queue, by source", "/review/queue?source=batch"),
    ("alerts, by patient", "/review/alerts?patient=Patient/p1234"),
    ("analytics 30 days", "/review/analytics?window=30"),
    ("analytics 90 days", "/review/analytics?window=90"),
    ("analytics 365 days", "/review/analytics?window=365"),
    ("analytics all", "/review/analytics?window=all"),
    ("analytics CSV export", "/review/analytics.csv?window=all"),
    ("alerts CSV, 10k rows", "/review/alerts.csv"),
]


def fill(url: str, alerts: int) -> dict[str, int]:
    store = open_store(url, start_drainer=False)  # migrates: the schema and indexes the service uses
    with store.session() as db:
        user = user_admin.add_user(db, "bench", PASSWORD, "reviewer", actor="bench")
        db.flush()
        reviewer = user.id
    store.close()
    engine = create_engine(resolve_url(url))
    rules = ", ".join(f"'{r}'" for r in RULES)
    with engine.begin() as conn:
        for statement in FILL.replace("RULE_LIST", rules).replace("N_RULES", str(len(RULES))).split(";\n"):
            if statement.strip():
                conn.execute(text(statement), {"patients": PATIENTS, "evaluations": alerts // 2,
                                               "reviewer": reviewer})
    started = time.perf_counter()
    with engine.begin() as conn:  # rows filled in SQL bypass the writer: roll them up as the migration does
        rebuild(conn)
        rebuild_queue(conn)
    print(f"analytics rollup and queue items rebuilt in {time.perf_counter() - started:.1f} s")
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
        counts = {name: int(conn.execute(text(f"SELECT count(*) FROM {name}")).scalar() or 0)
                  for name in ("evaluations", "alerts", "prescriber_feedback")}
        counts["open"] = int(conn.execute(
            text("SELECT count(*) FROM alerts WHERE review_status = 'open'")).scalar() or 0)
    engine.dispose()
    return counts


def measure(base: str, requests: int, warm: int) -> list[tuple[str, float, float, int, dict[int, int]]]:
    """Per page: (name, p50 ms, p95 ms, bytes, statuses other than 200 with their counts)."""
    out = []
    with httpx.Client(base_url=base, timeout=120, follow_redirects=False) as client:
        csrf = csrf_of(client.get("/review/login").text)
        signed = client.post("/review/login", data={"username": "bench", "password": PASSWORD,
                                                    "csrf_token": csrf, "next": "/review/queue"})
        assert signed.status_code == 303, signed.status_code
        for name, path in PAGES:
            for _ in range(warm):  # warm the caches (PostgreSQL buffers, the pack, templates)
                client.get(path)
            times = []
            size = 0
            failed: dict[int, int] = {}
            for _ in range(requests):
                start = time.perf_counter()
                answer = client.get(path)
                times.append((time.perf_counter() - start) * 1000)
                if answer.status_code != 200:  # e.g. 503: the statement ran past the 5 s limit
                    failed[answer.status_code] = failed.get(answer.status_code, 0) + 1
                size = len(answer.content)
            times.sort()
            p95 = times[min(len(times) - 1, max(0, round(0.95 * len(times)) - 1))]
            out.append((name, statistics.median(times), p95, size, failed))
    return out


def explain(url: str) -> None:
    """EXPLAIN ANALYZE of the queue's, analytics' and export's statements, as the service builds them."""
    from sqlalchemy import event

    from cds_engine.store.alert_export import export_rows
    from cds_engine.store.queries import AlertFilter, analytics
    from cds_engine.store.queue_items import work_queue_from_items

    # no 5 s statement limit here: the plan of a statement the service gives up on is the point
    store = open_store(url + "?options=-c%20statement_timeout%3D0", start_drainer=False)
    captured: list[tuple[str, object]] = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def keep(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        captured.append((statement, parameters))

    with store.session() as db:
        work_queue_from_items(db)
        work_queue_from_items(db, source="batch")
        analytics(db)
        sum(1 for _ in export_rows(db, AlertFilter()))
    event.remove(store.engine, "before_cursor_execute", keep)
    raw = store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        for statement, parameters in captured:
            if not statement.lstrip().upper().startswith("SELECT"):
                continue
            print("\n-- " + " ".join(statement.split())[:240] + " …")
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS, SETTINGS) " + statement, parameters)
            for (line,) in cursor.fetchall():
                print("   " + line)
        raw.rollback()
    finally:
        raw.close()
    store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alerts", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE the queue, analytics, export")
    parser.add_argument("--warm", type=int, default=3, help="warm-up requests per page")
    parser.add_argument("--smoke", action="store_true", help="2,000 alerts, 2 requests (seconds)")
    args = parser.parse_args()
    if args.smoke:
        args.alerts, args.requests, args.warm = 2_000, 2, 1
    print(machine_header("bench/review.py", smoke=args.smoke))
    if not os.environ.get("CDS_TEST_DATABASE_URL"):
        print("PostgreSQL not available: set CDS_TEST_DATABASE_URL (scripts/test.sh does) — nothing measured")
        return 0
    with postgres_database() as url, tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        counts = fill(url, args.alerts)
        filled = time.perf_counter() - started
        total, feedback = counts["alerts"], counts["prescriber_feedback"]
        print(f"filled in {filled:.1f} s: {total:,} alerts ({counts['open'] / total:.1%} open), "
              f"{counts['evaluations']:,} evaluations, {feedback:,} feedback rows "
              f"({feedback / total:.1%} of alerts)")
        if args.explain:
            explain(url)
        serve = ["--rules", str(REPO / "rules"), "--db", url, "--no-auth", "--log-level", "warning"]
        with serve_process(serve, Path(tmp), env={"CDS_SPOOL_DIR": str(Path(tmp) / "spool")},
                           timeout=120) as (base, _, _):
            rows = measure(base, args.requests, args.warm)
    print(f"\n{'page':<24} {'p50 ms':>8} {'p95 ms':>8}  goal p95 <= {GOAL_MS:.0f} ms "
          f"(c1, {args.requests} requests, {args.warm} warm-up)")
    for name, p50, p95, size, failed in rows:
        verdict = "ok" if p95 <= GOAL_MS and not failed else "OVER" if not failed else f"FAILED {failed}"
        print(f"{name:<24} {p50:8.1f} {p95:8.1f}  {verdict}  ({size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
