"""SIGTTIN and SIGTTOU on ``serve --workers N``: a worker added is a full worker on a slot socket of its
own, and a worker taken away leaves no listening socket behind that nobody accepts from.

uvicorn's own handlers started a plain process on the first slot's socket (no frozen heap, no release
before SIGTERM) whose death then broke the supervisor's loop (a slot index with no socket), and
stopped a worker while the parent kept its slot socket open — the kernel went on hashing new
connections onto it, and they waited forever.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import httpx

from service_helpers import REPO, process_gone, serve_process, wait_for

START = 240.0  # a worker may take this long to start on a busy 2-core machine
_FROZE = re.compile(r"worker \[(\d+)\]: (\d+) start-up objects frozen")


def _answering(base: str, want: int, seen: set[int] | None = None) -> set[int]:
    """Worker pids seen answering /healthz on new connections until ``want`` distinct ones (or START)."""
    pids: set[int] = set() if seen is None else seen

    def enough() -> bool:
        pids.add(httpx.get(f"{base}/healthz", timeout=10).json()["worker"]["pid"])
        return len(pids) >= want

    wait_for(enough, START, interval=0.1, what=f"{want} workers answering", ignoring=(httpx.HTTPError,))
    return pids


def _only(base: str, connections: int = 40) -> set[int]:
    """Pids behind ``connections`` new connections, each answered within 5 s (raises if one waits)."""
    return {httpx.get(f"{base}/healthz", timeout=5).json()["worker"]["pid"] for _ in range(connections)}


def test_sigttin_adds_a_full_worker_and_sigttou_leaves_no_socket_without_one(tmp_path: Path) -> None:
    args = ["--no-auth", "--db", "none", "--rules", str(REPO / "rules"), "--workers", "2"]
    with serve_process(args, tmp_path, env={"CDS_SERVE_SPARE": "0"}, timeout=START) as (base, parent, log):
        first = _answering(base, 2)
        os.kill(parent.pid, signal.SIGTTIN)
        (added,) = _answering(base, 3, set(first)) - first  # reachable: its own slot socket
        wait_for(lambda: str(added) in {pid for pid, _ in _FROZE.findall(log.read_text())}, START,
                 interval=0.3, what="the added worker's start-up heap frozen")

        os.kill(added, signal.SIGKILL)  # its slot is replaced like any other (the supervisor survives)
        wait_for(lambda: process_gone(added), 30, what="the added worker gone")
        (replacement,) = _answering(base, 4, first | {added}) - first - {added}

        os.kill(parent.pid, signal.SIGTTOU)
        wait_for(lambda: process_gone(replacement), START, what="the last slot's worker stopped")
        assert _only(base) <= first, "a connection reached a stopped worker's slot"
        os.kill(parent.pid, signal.SIGTTOU)
        wait_for(lambda: len(_only(base)) == 1, START, interval=0.5, what="one worker left",
                 ignoring=(httpx.HTTPError,))
        os.kill(parent.pid, signal.SIGTTOU)  # never the last one
        assert len(_only(base)) == 1
        assert parent.poll() is None, log.read_text()[-3000:]
