"""jti replay check micro-benchmark: the shared store must answer in p99 <= 1 ms per check (issue #19).

Run: ``python bench/replay.py [--checks 20000] [--prefill 100000] [--pg URL] [--smoke]``.

Measures, on a table already holding ``--prefill`` live ids (the default per-issuer quota):

* ``sqlite direct``: one ``SqliteReplayStore.first_use`` (an autocommitted upsert on a WAL file);
* ``sqlite guard``: the whole check a request awaits (``ReplayGuard.check``: the hop to the replay
  thread pool and back, the deadline, the quota), one at a time;
* ``sqlite 2 writers``: two processes checking new ids on the same file at once (two workers);
* ``postgresql direct`` / ``guard``, with ``--pg`` (a database URL; the table is created there).

Prints p50/p99/max in milliseconds. Timings on a shared machine vary: figures of record come from
a quiet run (load average in the header).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import time
import uuid
from pathlib import Path

from bench_common import machine_header, use_repo_paths

use_repo_paths()

from cds_engine.service.replay import ReplayGuard, ReplaySettings  # noqa: E402
from cds_engine.service.replay_store import open_replay_store  # noqa: E402

ISS = "https://ehr.example"


def _prefill(url: str, n: int) -> None:
    store = open_replay_store(url)
    now = time.time()
    rows = [(ISS, f"pre-{i}", now + 3600) for i in range(n)]
    # bulk load only: the bench's own set-up, on the store's connection for this thread
    with store._conns.use(store._connect) as conn:  # type: ignore[attr-defined]
        if url.startswith("sqlite"):
            conn.execute("BEGIN")
            conn.executemany("INSERT OR IGNORE INTO jti_seen VALUES (?, ?, ?)", rows)
            conn.execute("COMMIT")
        else:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO cds_jti_replay VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", rows
                )
    store.close()


def _direct(url: str, checks: int) -> list[float]:
    store = open_replay_store(url)
    lat = []
    for _ in range(checks):
        now = time.time()
        t0 = time.perf_counter()
        assert store.first_use(ISS, uuid.uuid4().hex, now + 300, now)
        lat.append(time.perf_counter() - t0)
    store.close()
    return lat


def _guard(url: str, checks: int) -> list[float]:
    guard = ReplayGuard(ReplaySettings(url=url, quota_per_issuer=10**9))

    async def run() -> list[float]:
        lat = []
        for _ in range(checks):
            t0 = time.perf_counter()
            verdict = await guard.check(ISS, uuid.uuid4().hex, time.time() + 300)
            lat.append(time.perf_counter() - t0)
            assert verdict == "first-use", verdict  # the fallback answers first-use too
        return lat

    try:
        return asyncio.run(run())
    finally:
        failures = guard.stats()["store_failures_total"]
        guard.close()
        if failures:  # answered by the per-process fallback: the deadline was missed
            deadline = guard.settings.timeout_seconds * 1000
            print(f"({failures} of {checks} guard checks missed the {deadline:.0f} ms deadline)")


def _writer(args: tuple[str, int]) -> list[float]:
    return _direct(*args)


def _table(name: str, lat: list[float]) -> str:
    lat = sorted(lat)
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000  # noqa: E731
    return f"| {name} | {len(lat)} | {pct(0.5):.3f} | {pct(0.99):.3f} | {lat[-1] * 1000:.3f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checks", type=int, default=20_000)
    parser.add_argument("--prefill", type=int, default=100_000)
    parser.add_argument("--pg", help="PostgreSQL URL for the multi-host store (optional)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), figures meaningless")
    args = parser.parse_args()
    if args.smoke:
        args.checks, args.prefill = 300, 2_000
    print(machine_header("bench/replay.py", args.smoke))
    print(f"checks per row: {args.checks}; live ids already in the table: {args.prefill}\n")
    print("| store | checks | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'jti.db'}"
        _prefill(url, args.prefill)
        print(_table("sqlite direct", _direct(url, args.checks)))
        print(_table("sqlite guard (whole awaited check)", _guard(url, args.checks)))
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            both = pool.map(_writer, [(url, args.checks // 2)] * 2)
        print(_table("sqlite 2 writer processes", both[0] + both[1]))
    if args.pg:
        _prefill(args.pg, args.prefill)
        print(_table("postgresql direct", _direct(args.pg, args.checks)))
        print(_table("postgresql guard (whole awaited check)", _guard(args.pg, args.checks)))


if __name__ == "__main__":
    main()
