"""Where the store writer's CPU goes: ``--writer thread`` vs ``--writer process`` (issue 19 item 2).

Run: ``python bench/writer_split.py [--requests 400] [--rounds 3] [--stores sqlite,postgresql]``
(PostgreSQL through ``CDS_TEST_DATABASE_URL``). For each round and store it starts
``bench/hook.py``'s server once per writer mode, in turn (interleaved, so a busy machine affects
both alike), drives the same order-sign at concurrency 4, waits until the store holds every call,
and reads CPU seconds from ``/proc``: the request process (minus its ``cds-writer`` thread), that
thread, and the writer process (a child of the server). CPU time of one process does not depend on
what else runs on the cores the way wall-clock latency does — this is the figure to compare on a
shared machine. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench_common import machine_header, subprocess_env, use_repo_paths

use_repo_paths()

from tests.service_helpers import wait_until_up  # noqa: E402

HOOK = Path(__file__).with_name("hook.py")
TICK = os.sysconf("SC_CLK_TCK")


def _cpu(stat_path: Path) -> float:
    fields = stat_path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def _split(pid: int) -> dict[str, float]:
    """CPU seconds: the server process, its writer thread, its writer child process."""
    total = _cpu(Path(f"/proc/{pid}/stat"))
    thread = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == "cds-writer":
                thread += _cpu(task / "stat")
        except OSError:
            continue
    child = 0.0
    for kid in _children(pid):
        try:
            child += _cpu(Path(f"/proc/{kid}/stat"))
        except OSError:
            continue
    return {"request": total - thread, "thread": thread, "process": child}


def _stored(url: str) -> int:
    from sqlalchemy import func, select

    from cds_engine.store import open_store
    from cds_engine.store.models import Evaluation

    with open_store(url, spool_dir=tempfile.mkdtemp(), start_drainer=False) as store, store.session() as s:
        return int(s.scalar(select(func.count()).select_from(Evaluation)) or 0)


def one(mode: str, url: str, payload: str, requests: int) -> dict[str, float]:
    from hook import SIGN, drive

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="cds-split-")
    command = [sys.executable, str(HOOK), "--serve", str(port), "--serve-db", url]
    server = subprocess.Popen(command, cwd=workdir, env=subprocess_env(CDS_STORE_WRITER=mode))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, server)
        before_rows = _stored(url)
        asyncio.run(drive(base, SIGN, payload, 40, 4))  # warm-up
        deadline = time.monotonic() + 120  # the writer (thread or process) is up and has stored them
        while _stored(url) < before_rows + 40 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        start = _split(server.pid)
        latencies, elapsed, _ = asyncio.run(drive(base, SIGN, payload, requests, 4))
        target = before_rows + 40 + requests
        deadline = time.monotonic() + 120
        while _stored(url) < target and time.monotonic() < deadline:
            time.sleep(0.1)
        end = _split(server.pid)
    finally:
        server.terminate()
        server.wait(60)
    ms = {k: (end[k] - start[k]) * 1000 / requests for k in start}
    return {**ms, "rps": len(latencies) / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--smoke", action="store_true", help="a few seconds: 20 requests, one round, SQLite")
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.rounds, args.stores = 20, 1, "sqlite"
    from hook import realistic_body

    from store_helpers import postgres_database

    print(machine_header("bench/writer_split.py", args.smoke))
    body, _count = realistic_body()
    body["hookInstance"] = "__HOOK_INSTANCE__"
    payload = json.dumps(body)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with ExitStack() as stack:
        urls = {}
        for store in args.stores.split(","):
            if store == "sqlite":
                urls[store] = f"sqlite:///{stack.enter_context(tempfile.TemporaryDirectory())}/bench.db"
            else:
                urls[store] = stack.enter_context(postgres_database())
        for _ in range(args.rounds):
            for store, url in urls.items():
                for mode in ("thread", "process"):
                    results.setdefault((store, mode), []).append(one(mode, url, payload, args.requests))
    print(f"\n{args.rounds} rounds, {args.requests} order-signs at c4 per cell, modes interleaved; "
          "CPU ms per request from /proc (median over rounds)\n")
    print("| store | writer | request process | writer thread | writer process | c4 req/s |")
    print("|---|---|---:|---:|---:|---:|")
    for (store, mode), runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"| {store} | {mode} | {med['request']:.2f} | {med['thread']:.2f} | {med['process']:.2f} "
              f"| {med['rps']:.0f} |")


if __name__ == "__main__":
    main()
