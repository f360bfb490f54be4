"""`serve --workers 2`, one worker SIGKILLed: connections made meanwhile are answered (issue #19 item 4).

Each worker slot has its own SO_REUSEPORT listening socket, held by the parent; the kernel hashes
every new connection onto one of them. Connections hashed onto the dead worker's socket queue in its
backlog until a worker accepts them. Closing that socket (what the supervisor used to do when it
found the worker dead) resets every queued connection — a second error for each client that had
just reconnected after losing its connection to the killed worker. The replacement now takes the
same socket, so they are answered once it is up.

Raw sockets: all the connections are opened in a few milliseconds right after the kill (before the
supervisor's next check, at most 0.5 s later), then each sends one request and reads the answer.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from service_helpers import REPO, healthz_on, process_gone, serve_process, wait_for

RULES = str(REPO / "rules")
START = 240.0  # seconds a worker may take to start on a busy 2-core machine (it compiles the packs)
CONNECTIONS = 16  # each lands on the dead slot with probability 1/2: all 16 miss it 1 time in 65,536


def _workers(base: str, want: int = 2) -> set[int]:
    """The pids of ``want`` different workers, each seen through a new connection to /healthz."""
    seen: set[int] = set()

    def enough() -> bool:
        seen.add(httpx.get(f"{base}/healthz", timeout=10).json()["worker"]["pid"])
        return len(seen) >= want

    wait_for(enough, START, interval=0.3, what=f"{want} workers answering", ignoring=(httpx.HTTPError,))
    return seen


def test_connections_made_while_a_worker_is_replaced_are_answered(tmp_path: Path) -> None:
    args = ["--no-auth", "--db", "none", "--rules", RULES, "--workers", "2"]
    with serve_process(args, tmp_path, timeout=START) as (base, _parent, log):
        port = int(base.rsplit(":", 1)[1])
        before = _workers(base)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        while not process_gone(victim):
            time.sleep(0.001)
        killed = time.monotonic()
        conns = [socket.create_connection(("127.0.0.1", port), timeout=START) for _ in range(CONNECTIONS)]
        opened = time.monotonic() - killed
        with ThreadPoolExecutor(CONNECTIONS) as pool:
            answers = list(pool.map(lambda c: healthz_on(c, port), conns))
        waited = time.monotonic() - killed

        statuses = [status for status, _ in answers]
        assert statuses == ["200"] * CONNECTIONS, (
            f"{statuses} (connections opened {opened * 1000:.0f} ms after the kill; "
            f"server log tail: {log.read_text()[-1500:]})"
        )
        pids = {json.loads(body)["worker"]["pid"] for _, body in answers}
        assert victim not in pids
        replacement = pids - before
        assert replacement, "no connection reached the replacement (all 16 hashed onto the survivor?)"
        print(f"replacement answered {waited:.1f} s after the kill")
