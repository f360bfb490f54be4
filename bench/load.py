"""Sustained load on a real ``cds-engine serve`` with client authentication on (issue 7, item 1).

Run: ``python bench/load.py [--seconds 60] [--concurrency 32] [--db sqlite,postgresql] [--smoke]``.

For each store it starts ``cds-engine serve`` (the real command, uvicorn, default INFO request
log) with a trusted-issuers file this script writes (one ES384 key), then drives order-sign calls
at a fixed concurrency for the given time. Every call carries a freshly signed ES384 JWT (``aud`` =
the URL called, unique ``jti``) and a unique ``hookInstance``; the body is an order-sign for a
Synthea patient with a template-filled prefetch (the same body as ``bench/hook.py``).

Afterwards the server is stopped and the store is read directly: every hookInstance that got a
200 must have exactly one evaluation row for the baclofen pack, and no other hookInstance may
appear (nothing lost, nothing duplicated); the spool must be empty. PostgreSQL uses a fresh
database on the server named by ``CDS_TEST_DATABASE_URL`` (as the tests do), dropped after the run;
``--smoke`` (2 s, concurrency 4) runs SQLite, and PostgreSQL too when that variable is set.

Goals: zero errors, p99 ≤ 500 ms. The load generator shares the machine's cores with the server,
so the figures understate what a dedicated server does. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from bench_common import REPO, machine_header, subprocess_env, use_repo_paths

use_repo_paths()

from hook import realistic_body  # noqa: E402  (same body as the service benchmark)
from tests.service_helpers import Signer  # noqa: E402

SIGN = "/cds-services/baclofen-order-sign"


@dataclass
class Run:
    store: str
    seconds: float
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    ok: list[str] = field(default_factory=list)  # hookInstances answered 200
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    stored_once: int = 0
    missing: int = 0
    duplicated: int = 0
    unexpected: int = 0
    spool_left: int = 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the server named by CDS_TEST_DATABASE_URL, dropped afterwards."""
    from store_helpers import postgres_admin_url  # tests/store_helpers.py
    from store_helpers import postgres_database as fresh

    if postgres_admin_url() is None:
        raise SystemExit("bench/load.py: set CDS_TEST_DATABASE_URL for the PostgreSQL run (or --db sqlite)")
    with fresh() as url:
        yield url


@contextmanager
def serve(db_url: str, workdir: Path, signer: Signer) -> Iterator[str]:
    issuers = signer.issuers_file(workdir)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = subprocess_env(CDS_SPOOL_DIR=str(workdir / "spool"), PYTHONUNBUFFERED="1")
    env.pop("CDS_DATABASE_URL", None)
    log = (workdir / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "cds_engine.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--rules", str(REPO / "rules"), "--db", db_url, "--trusted-issuers", str(issuers),
         "--public-url", base],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300  # a deadline, not a timing: a busy machine starts slowly
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start:\n" + (workdir / "server.log").read_text())
            time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


async def drive(base: str, payload: str, signer: Signer, run: Run) -> None:
    url = base + SIGN
    limits = httpx.Limits(max_connections=run.concurrency, max_keepalive_connections=run.concurrency)
    stop_at = time.perf_counter() + run.seconds
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                hook_instance = str(uuid.uuid4())
                body = payload.replace("__HOOK_INSTANCE__", hook_instance)
                headers = {"content-type": "application/json", "authorization": f"Bearer {signer.token(url)}"}
                t0 = time.perf_counter()
                try:
                    response = await client.post(url, content=body, headers=headers)
                    key = str(response.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                run.latencies.append(time.perf_counter() - t0)
                if key == "200":
                    run.ok.append(hook_instance)
                else:
                    run.errors[key] = run.errors.get(key, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(run.concurrency)))
        run.elapsed = time.perf_counter() - start


def check_store(db_url: str, workdir: Path, run: Run) -> None:
    """Every 200 stored exactly once (baclofen pack, hook source), nothing else, spool empty."""
    from sqlalchemy import create_engine, func, select

    from cds_engine.store.models import Evaluation

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(Evaluation.hook_instance, func.count())
                .where(Evaluation.source == "hook", Evaluation.pack_id == "baclofen")
                .group_by(Evaluation.hook_instance)
            ).all()
    finally:
        engine.dispose()
    counts = {h: n for h, n in rows}
    answered = set(run.ok)
    run.stored_once = sum(1 for h in answered if counts.get(h) == 1)
    run.missing = sum(1 for h in answered if h not in counts)
    run.duplicated = sum(1 for n in counts.values() if n > 1)
    run.unexpected = sum(1 for h in counts if h not in answered)
    spool = workdir / "spool"
    run.spool_left = sum(1 for p in spool.rglob("*") if p.is_file()) if spool.exists() else 0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000 if ordered else float("nan")


def one_run(store: str, payload: str, seconds: float, concurrency: int, warm_seconds: float = 3) -> Run:
    run = Run(store=store, seconds=seconds, concurrency=concurrency)
    signer = Signer(issuer="https://ehr.load.example")
    with tempfile.TemporaryDirectory(prefix="cds-load-") as tmp:
        workdir = Path(tmp)

        def go(db_url: str) -> None:
            with serve(db_url, workdir, signer) as base:
                warm = Run(store=store, seconds=warm_seconds, concurrency=4)
                asyncio.run(drive(base, payload, signer, warm))
                asyncio.run(drive(base, payload, signer, run))
                time.sleep(1)
            run.ok.extend(warm.ok)  # warm-up calls are stored too
            check_store(db_url, workdir, run)
            if "Traceback" in (workdir / "server.log").read_text():
                run.errors["server traceback"] = 1

        if store == "sqlite":
            go(f"sqlite:///{workdir}/load.db")
        else:
            with postgres_database() as url:
                go(url)
    return run


def report(runs: list[Run], body_kib: int, resources: int) -> str:
    lines = [
        "## Load (bench/load.py)\n",
        f"Run: `python bench/load.py --seconds {runs[0].seconds:g}`. The real `cds-engine serve` "
        "(uvicorn, one "
        "worker, INFO request log) with client authentication on: a trusted-issuers file with one ES384 "
        "key; every call carries a freshly signed ES384 JWT (aud = the URL, unique jti) and a unique "
        f"hookInstance. Body: order-sign for a Synthea patient, {resources} prefetched resources + 1 "
        f"draft baclofen order, {body_kib} KiB. Concurrency {runs[0].concurrency} (httpx, one event loop).\n",
        f"Machine: `nproc` = {os.cpu_count()}, {platform.machine()}, Python {platform.python_version()}. "
        "**The load generator (including ES384 signing of every token) shares the 2 cores with the "
        "server**, and other sessions may have been running tests on the same VM.\n",
        "| store | seconds | requests | requests/s | p50 ms | p99 ms | p99.9 ms | errors | stored once | "
        "missing | duplicated | spool left |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        n = len(r.latencies)
        errors = sum(r.errors.values())
        detail = f" ({', '.join(f'{k}: {v}' for k, v in r.errors.items())})" if errors else ""
        lines.append(
            f"| {r.store} | {r.elapsed:.0f} | {n} | {n / r.elapsed:.0f} | {_pct(r.latencies, 0.5):.0f} | "
            f"{_pct(r.latencies, 0.99):.0f} | {_pct(r.latencies, 0.999):.0f} | {errors}{detail} | "
            f"{r.stored_once}/{len(r.ok)} | {r.missing} | {r.duplicated} | {r.spool_left} |"
        )
    lines.append(
        "\n'stored once': hookInstances answered 200 (warm-up included) with exactly one evaluation row "
        "for the pack, counted in the database after the server stopped; rows for hookInstances that "
        f"were never answered 200: {', '.join(str(r.unexpected) for r in runs)}."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--db", default="sqlite,postgresql", help="comma list: sqlite, postgresql")
    parser.add_argument("--smoke", action="store_true", help="2 s, concurrency 4 (PostgreSQL if configured)")
    args = parser.parse_args()
    if args.smoke:
        from store_helpers import postgres_admin_url

        args.seconds, args.concurrency = 2, 4
        args.db = "sqlite,postgresql" if postgres_admin_url() else "sqlite"
    print(machine_header("bench/load.py", args.smoke))
    body, resources = realistic_body()
    body["hookInstance"] = "__HOOK_INSTANCE__"
    payload = json.dumps(body)
    runs = []
    for store in args.db.split(","):
        run = one_run(store.strip(), payload, args.seconds, args.concurrency, 0.5 if args.smoke else 3)
        print(f"{store}: {len(run.latencies)} requests, errors {run.errors}", file=sys.stderr)
        runs.append(run)
    print(report(runs, len(payload) // 1024, resources))


if __name__ == "__main__":
    main()
