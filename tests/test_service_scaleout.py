"""Several workers and hosts (issue #19 item 1), with real ``cds-engine serve`` processes.

* Two hosts behind one load balancer (the same ``--public-url``) on one PostgreSQL replay store:
  a token used at one is refused at the other, and that host's log names replay as the reason.
* ``--workers 2`` on one host: the SQLite replay file in the data directory refuses a replay
  whichever worker gets it; every worker hot-reloads, and a broken pack leaves each on its last
  good packs (SIGHUP to the parent reaches every worker).
* The replay store locked: the failure policy applies (``refuse`` → 401 naming the store;
  ``per-process`` → 200, counted in ``/healthz``).

Every new connection (``httpx.get``) may land on either worker; ``/healthz`` names the worker's pid.
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service_helpers import REPO, Signer, serve_process, wait_for
from store_helpers import free_port, postgres_database

RULES = str(REPO / "rules")
PUBLIC = "https://cds.example.org"  # what the EHR calls: the load balancer, not any one process
START = 240.0  # seconds a server may take to start on a busy 2-core machine (every worker compiles the packs)
SETTLE = 120.0  # seconds every worker may take to see a pack change
_NOT_YET = (httpx.HTTPError,)  # a worker still starting or being replaced


def _health() -> Callable[[str], dict[str, Any]]:
    return lambda base: httpx.get(f"{base}/healthz", timeout=10).json()




def _workers(base: str, want: int = 2, timeout: float = START) -> dict[int, dict[str, Any]]:
    """The latest /healthz of each worker, once ``want`` different workers have answered."""
    seen: dict[int, dict[str, Any]] = {}

    def enough() -> bool:
        body = httpx.get(f"{base}/healthz", timeout=10).json()  # a new connection each time
        seen[body["worker"]["pid"]] = body
        return len(seen) >= want

    wait_for(enough, timeout, interval=0.3, what=f"{want} workers answering", ignoring=_NOT_YET)
    return seen


def _discovery(base: str, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.get(f"{base}/cds-services", headers=headers, timeout=20).status_code


def test_two_hosts_on_one_postgres_refuse_a_token_replayed_at_the_other(tmp_path: Path) -> None:
    signer = Signer()
    issuers = signer.issuers_file(tmp_path)
    with postgres_database() as url:
        args = [
            "--trusted-issuers", str(issuers), "--public-url", PUBLIC, "--db", "none", "--rules", RULES,
            "--replay-store", url,
        ]
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with (
            serve_process(args, tmp_path / "a", timeout=START) as (base_a, _, log_a),
            serve_process(args, tmp_path / "b", timeout=START) as (base_b, _, log_b),
        ):
            token = signer.token(f"{PUBLIC}/cds-services")
            assert _discovery(base_a, token) == 200
            assert _discovery(base_b, token) == 401  # the other host saw it in the shared table
            assert _discovery(base_a, token) == 401
            assert _discovery(base_b, signer.token(f"{PUBLIC}/cds-services")) == 200  # a fresh one is fine
            assert httpx.get(f"{base_b}/healthz", timeout=10).json()["jti_replay"]["backend"] == "postgresql"
        assert "jti replayed" in log_b.read_text()
        assert "store_failures" not in log_a.read_text()


def test_workers_share_the_sqlite_replay_file_in_the_data_directory(tmp_path: Path) -> None:
    signer = Signer()
    issuers = signer.issuers_file(tmp_path)
    data = tmp_path / "data"
    args = [
        "--trusted-issuers", str(issuers), "--public-url", PUBLIC, "--db", "none", "--rules", RULES,
        "--workers", "2", "--data-dir", str(data),
    ]
    with serve_process(args, tmp_path, timeout=START) as (base, _, log):
        workers = _workers(base)
        assert {w["jti_replay"]["backend"] for w in workers.values()} == {"sqlite"}
        refused = 0
        for _ in range(5):
            token = signer.token(f"{PUBLIC}/cds-services")
            assert _discovery(base, token) == 200
            # each replay on a new connection: with 2 workers, 20 replays all landing on the worker
            # that accepted the token (a per-process cache would pass the rest) is a 1-in-10^6 fluke
            refused += sum(_discovery(base, token) == 401 for _ in range(4))
        assert refused == 20
    path = data / "jti-replay.db"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sqlite3.connect(path).execute("SELECT count(*) FROM jti_seen").fetchone()[0] == 5
    assert log.read_text().count("jti replayed") == 20


def test_every_worker_reloads_and_a_broken_pack_keeps_the_last_good_in_all(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    pack_file = rules / "baclofen" / "pack.yaml"
    good = pack_file.read_text(encoding="utf-8")
    args = ["--no-auth", "--db", "none", "--rules", str(rules), "--workers", "2"]
    with serve_process(args, tmp_path, timeout=START) as (base, parent, _log):
        pids = set(_workers(base))

        def all_workers(check: Callable[[dict[str, Any]], bool]) -> bool:
            state = _workers(base, timeout=60)
            return set(state) == pids and all(check(body) for body in state.values())

        def version(body: dict[str, Any]) -> str:
            return next(p["version"] for p in body["packs"] if p["id"] == "baclofen")

        pack_file.write_text(good.replace("  version: 1.0.0", "  version: [1.0.0"), encoding="utf-8")
        parent.send_signal(signal.SIGHUP)  # passed on to every worker (and the file watcher sees it too)
        wait_for(lambda: all_workers(lambda b: b["worker"]["rules_reload_refused"]), SETTLE, interval=0.3,
                 what="every worker refusing the broken pack", ignoring=_NOT_YET)
        assert all_workers(lambda b: version(b) == "1.0.0")
        assert parent.poll() is None
        assert httpx.get(f"{base}/cds-services", timeout=10).status_code == 200

        pack_file.write_text(good.replace("  version: 1.0.0", "  version: 1.0.1"), encoding="utf-8")
        wait_for(
            lambda: all_workers(lambda b: version(b) == "1.0.1" and not b["worker"]["rules_reload_refused"]),
            SETTLE, interval=0.3, what="every worker on the fixed pack", ignoring=_NOT_YET,
        )


@pytest.mark.parametrize("policy", ["refuse", "per-process"])
def test_a_locked_replay_store_applies_the_failure_policy(tmp_path: Path, policy: str) -> None:
    signer = Signer()
    issuers = signer.issuers_file(tmp_path)
    path = tmp_path / "jti.db"
    args = [
        "--trusted-issuers", str(issuers), "--public-url", PUBLIC, "--db", "none", "--rules", RULES,
        "--replay-store", f"sqlite:///{path}", "--jti-on-store-failure", policy,
    ]
    with serve_process(args, tmp_path, timeout=START) as (base, _, log):
        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # a stuck writer: every other writer waits
        try:
            status = _discovery(base, signer.token(f"{PUBLIC}/cds-services"))
            health = httpx.get(f"{base}/healthz", timeout=10).json()["jti_replay"]
        finally:
            lock.rollback()
            lock.close()
    assert status == (401 if policy == "refuse" else 200)
    assert health["store_failures_total"] >= 1 and health["on_store_failure"] == policy
    text = log.read_text()
    lines = text.splitlines()
    assert any("ERROR" in line and "jti replay store (sqlite) unavailable" in line for line in lines)
    if policy == "refuse":
        assert "jti replay store unavailable (jti_on_store_failure = refuse)" in text


def test_an_unreachable_replay_store_at_start_refuses_to_start(tmp_path: Path) -> None:
    """Never silently unprotected: a replay store that cannot be opened stops serve (exit 2)."""
    import subprocess
    import sys

    signer = Signer()
    issuers = signer.issuers_file(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "cds_engine.cli", "serve", "--trusted-issuers", str(issuers),
         "--public-url", PUBLIC, "--db", "none", "--rules", RULES,
         "--replay-store", f"postgresql://nobody@127.0.0.1:{free_port()}/none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=START,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--replay-store: cannot open it" in done.stderr


def test_a_worker_that_dies_while_a_pack_is_broken_does_not_stop_the_service(tmp_path: Path) -> None:
    """uvicorn would stop every worker when a replacement cannot start; ours keeps the survivor
    serving its last good packs and retries until the pack is fixed."""
    import os

    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    pack_file = rules / "baclofen" / "pack.yaml"
    good = pack_file.read_text(encoding="utf-8")
    args = ["--no-auth", "--db", "none", "--rules", str(rules), "--workers", "2"]
    no_spare = {"CDS_SERVE_SPARE": "0"}  # a replacement from disk (a spare would keep the last good)
    with serve_process(args, tmp_path, timeout=START, env=no_spare) as (base, parent, log):
        victim, survivor = sorted(_workers(base))
        pack_file.write_text(good.replace("  version: 1.0.0", "  version: [1.0.0"), encoding="utf-8")
        wait_for(lambda: all(b["worker"]["rules_reload_refused"] for b in _workers(base).values()), SETTLE,
                 interval=0.3, what="every worker refusing the broken pack", ignoring=_NOT_YET)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: "a worker could not start" in log.read_text(), START, interval=0.3,
                 what="a replacement tried")
        assert parent.poll() is None  # the service is still up ...
        for _ in range(5):  # ... answered by the survivor on its last good packs
            body = httpx.get(f"{base}/healthz", timeout=10).json()
            assert body["worker"]["pid"] == survivor
            assert next(p["version"] for p in body["packs"] if p["id"] == "baclofen") == "1.0.0"

        pack_file.write_text(good.replace("  version: 1.0.0", "  version: 1.0.1"), encoding="utf-8")

        def both_on_the_fixed_pack() -> bool:
            state = _workers(base, timeout=60)
            return survivor in state and all(
                next(p["version"] for p in b["packs"] if p["id"] == "baclofen") == "1.0.1"
                for b in state.values()
            )

        wait_for(both_on_the_fixed_pack, START, interval=0.3,
                 what="the replacement started on the fixed pack", ignoring=_NOT_YET)


def test_persistent_connections_are_spread_over_the_workers(tmp_path: Path) -> None:
    """One SO_REUSEPORT socket per worker: 32 keep-alive connections opened at once reach both workers
    (with one shared socket the first worker awake took nearly all of them)."""
    args = ["--no-auth", "--db", "none", "--rules", str(REPO / "rules"), "--workers", "2"]
    with serve_process(args, tmp_path, timeout=START) as (base, _process, _log):
        _workers(base)
        clients = [httpx.Client(timeout=30) for _ in range(32)]
        try:
            pids = [c.get(f"{base}/healthz").json()["worker"]["pid"] for c in clients]
            again = [c.get(f"{base}/healthz").json()["worker"]["pid"] for c in clients]
        finally:
            for c in clients:
                c.close()
    assert pids == again, "each connection stays with its worker"
    counts = sorted(pids.count(p) for p in set(pids))
    assert len(counts) == 2 and counts[0] >= 4, f"connections per worker: {counts}"
