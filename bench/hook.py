"""CDS Hooks service benchmark: order-sign with a realistic prefetch vs a parse-only baseline endpoint.

Run: ``python bench/hook.py [--requests 600] [--db none|sqlite] [--smoke]``. Starts one uvicorn process on
loopback serving the real service plus a baseline endpoint (``POST /baseline``) that parses the
*same* body into the same ``fhir.resources.R4B`` models — every draft order and every prefetched
resource — and returns nothing. Both are driven side by side in one run by an httpx client at
concurrency 1 and 16. The service's own time split (parse, prefetch, facts, evaluation, cards,
store) comes from its ``Server-Timing`` header. The body is an order-sign for a Synthea patient
(≈50 prefetched resources, filled from our discovery templates) with a baclofen order added.

Goals (issue 3): p50 ≤ 15 ms and p99 ≤ 50 ms at concurrency 1; p99 ≤ 500 ms at concurrency 16;
throughput ≥ 0.5× the baseline. Client and server share the machine's cores; compare ratios
from one run. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import httpx
from bench_common import REPO, machine_header, subprocess_env, use_repo_paths
from fastapi import APIRouter, Request, Response

use_repo_paths()

from tests.service_helpers import (  # noqa: E402  (the test helpers build realistic requests)
    LocalFhir,
    hook_request,
    medication_request,
    synthea_files,
    synthea_resources,
)

SIGN = "/cds-services/baclofen-order-sign"


# ── the server side ────────────────────────────────────────────────────────────────────────
def build_app(db: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    from cds_engine.engine import Engine
    from cds_engine.service import create_app
    from cds_engine.sources.fhir import bundle_resources

    engine = Engine.from_dir(REPO / "rules")
    sink, routers = None, []
    if db != "none":
        from cds_engine.commands.serve import open_sink

        sink, routers, _store = open_sink(db, lambda: engine)
    baseline = APIRouter()

    @baseline.post("/baseline")
    async def parse_only(request: Request) -> Response:
        body = json.loads(await request.body())
        resources = bundle_resources(body["context"]["draftOrders"])
        for value in (body.get("prefetch") or {}).values():
            if isinstance(value, dict):
                resources.extend(bundle_resources(value))
        for resource in resources:
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        return Response(status_code=204)

    return create_app(lambda: engine, sink=sink, auth=None, extra_routers=[baseline, *routers])


def serve(port: int, db: str) -> None:
    import logging

    import uvicorn

    from cds_engine.service.http_limits import KEEP_ALIVE_SECONDS, bounded_protocol

    logging.getLogger("cds_engine.service").setLevel(logging.WARNING)
    # the parser `serve` ships: httptools with the 64 KiB / 10 s header bounds, 5 s keep-alive
    uvicorn.run(
        build_app(db),
        host="127.0.0.1",
        port=port,
        access_log=False,
        log_level="warning",
        http=bounded_protocol(),
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )


# ── the client side ────────────────────────────────────────────────────────────────────────
def realistic_body(target: int = 50) -> tuple[dict[str, Any], int]:
    """An order-sign whose template-filled prefetch holds about ``target`` resources."""
    from cds_engine.engine import Engine
    from cds_engine.service.discovery import prefetch_templates

    pack = Engine.from_dir(REPO / "rules").packs[0]
    templates = prefetch_templates(pack)
    best = None
    for path in synthea_files(40):
        resources = synthea_resources(path)
        patient = next(r for r in resources if r["resourceType"] == "Patient")["id"]
        prefetch = LocalFhir(resources).prefetch(templates, {"patientId": patient})
        count = sum(
            len(v.get("entry", [])) if v.get("resourceType") == "Bundle" else 1
            for v in prefetch.values()
            if isinstance(v, dict)
        )
        if best is None or abs(count - target) < abs(best[2] - target):
            best = (patient, prefetch, count)
    assert best is not None
    patient, prefetch, count = best
    draft = medication_request(patient=patient, code="197391", dose=20, per_day=3)
    return hook_request("order-sign", patient, [draft], prefetch=prefetch), count


async def drive(
    base: str, path: str, payload: str, requests: int, concurrency: int
) -> tuple[list[float], float, list[str]]:
    latencies: list[float] = []
    timings: list[str] = []
    remaining = requests
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                body = payload.replace("__HOOK_INSTANCE__", str(uuid.uuid4()))
                t0 = time.perf_counter()
                response = await client.post(path, content=body, headers={"content-type": "application/json"})
                latencies.append(time.perf_counter() - t0)
                if response.status_code not in (200, 204):
                    raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
                if "server-timing" in response.headers:
                    timings.append(response.headers["server-timing"])

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return latencies, elapsed, timings


def many_drafts(base: str, body: dict[str, Any]) -> list[tuple[int, int, float]]:
    """(drafts, status, seconds) for one order-sign with 250 and with 251 draft orders (the cap)."""
    draft = body["context"]["draftOrders"]["entry"][0]["resource"]
    out = []
    for count in (250, 251):
        big = json.loads(json.dumps(body))
        big["hookInstance"] = str(uuid.uuid4())
        entries = [{"resource": {**draft, "id": f"mr-{i}"}} for i in range(count)]
        big["context"]["draftOrders"]["entry"] = entries
        start = time.perf_counter()
        response = httpx.post(base + SIGN, json=big, timeout=120)
        out.append((count, response.status_code, time.perf_counter() - start))
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def _split(timings: list[str]) -> dict[str, float]:
    parts: dict[str, list[float]] = {}
    for header in timings:
        for item in header.split(","):
            name, _, dur = item.strip().partition(";dur=")
            parts.setdefault(name, []).append(float(dur))
    return {k: statistics.mean(v) for k, v in parts.items()}


def jwt_cost(samples: int = 200) -> float:
    """Mean ms to verify one ES384 client JWT (the auth middleware's work per call)."""
    from tests.service_helpers import Signer

    from cds_engine.service.auth import AuthSettings, JwtVerifier, TrustedIssuer

    signer = Signer()
    verifier = JwtVerifier(AuthSettings(issuers={signer.issuer: TrustedIssuer(jwks=signer.jwks())}))
    tokens = [signer.token("http://bench/cds-services") for _ in range(samples)]

    async def run() -> float:
        t0 = time.perf_counter()
        for token in tokens:
            await verifier.verify(token, "http://bench/cds-services")
        return (time.perf_counter() - t0) / samples * 1000

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=600, help="requests per endpoint and concurrency")
    parser.add_argument("--db", default="none", help="none, or sqlite (a temporary SQLite store)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-db", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="a few seconds: 20 requests per cell")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.serve_db)
        return
    if args.smoke:
        args.requests = 20
    print(machine_header("bench/hook.py", args.smoke))

    body, count = realistic_body()
    body["hookInstance"] = "__HOOK_INSTANCE__"
    payload = json.dumps(body)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="cds-bench-")
    db = "none" if args.db == "none" else f"sqlite:///{tmp}/bench.db"
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--serve-db", db],
        cwd=tmp,
        env=subprocess_env(),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # a deadline, not a timing: a busy machine starts slowly
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the benchmark server did not start")
        rows = []
        splits = {}
        for path in (SIGN, "/baseline"):
            asyncio.run(drive(base, path, payload, 8 if args.smoke else 60, 4))  # warm-up
        for concurrency in (1, 16):
            for path in (SIGN, "/baseline"):
                latencies, elapsed, timings = asyncio.run(
                    drive(base, path, payload, args.requests, concurrency)
                )
                rows.append(
                    (
                        path,
                        concurrency,
                        len(latencies) / elapsed,
                        _pct(latencies, 0.50),
                        _pct(latencies, 0.99),
                    )
                )
                if timings:
                    splits[concurrency] = _split(timings)
        scale = many_drafts(base, body)
    finally:
        server.terminate()
        server.wait(timeout=10)

    print("## CDS Hooks service (bench/hook.py)\n")
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; body {len(payload) // 1024} KiB, {count} prefetched resources "
        "+ 1 draft "
        f"order; store: {args.db}; {args.requests} requests per cell; client and server on the same cores.\n"
    )
    print("| endpoint | concurrency | requests/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for path, concurrency, rps, p50, p99 in rows:
        name = "order-sign (service)" if path == SIGN else "baseline (parse only)"
        print(f"| {name} | {concurrency} | {rps:.0f} | {p50:.1f} | {p99:.1f} |")
    for concurrency in (1, 16):
        service = next(r for r in rows if r[0] == SIGN and r[1] == concurrency)
        baseline = next(r for r in rows if r[0] == "/baseline" and r[1] == concurrency)
        print(
            f"\nThroughput ratio service/baseline at concurrency {concurrency}: "
            f"{service[2] / baseline[2]:.2f}"
        )
    for concurrency, split in splits.items():
        total = sum(split.values())
        parts = ", ".join(f"{k} {v:.2f}" for k, v in split.items())
        print(f"\nServer time split at concurrency {concurrency} (mean ms, {total:.2f} in handler): {parts}")
    print("\nMany draft orders in one call (security issue 15; goals: 250 drafts < 2 s, 251 → 413 < 1 s):")
    for drafts, status, seconds in scale:
        print(f"- {drafts} drafts: {status} in {seconds:.2f} s")
    cost = jwt_cost(10 if args.smoke else 200)
    print(f"\nES384 client JWT verification (auth off in the runs above): {cost:.2f} ms per call")


if __name__ == "__main__":
    main()
