"""Hot reload in the running service: SIGHUP swaps a good pack in, a broken one never replaces it.

Also checks governance at the HTTP edge: a draft pack runs silently, so discovery offers no
service for it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def test_sighup_reload_keeps_last_good_pack(tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    pack_file = rules / "baclofen" / "pack.yaml"
    good = pack_file.read_text(encoding="utf-8")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "CDS_DATABASE_URL"}
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cds_engine.cli",
            "serve",
            "--no-auth",
            "--db",
            "none",
            "--rules",
            str(rules),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        assert _wait(lambda: httpx.get(f"{base}/healthz", timeout=2).status_code == 200), (
            "server did not start"
        )

        def versions() -> dict[str, str]:
            return {p["id"]: p["version"] for p in httpx.get(f"{base}/healthz", timeout=5).json()["packs"]}

        services = httpx.get(f"{base}/cds-services", timeout=5).json()["services"]
        assert {s["id"] for s in services} == {
            "baclofen-order-select",
            "baclofen-order-sign",
        }  # draft: silent
        assert versions()["baclofen"] == "1.0.0"

        pack_file.write_text(good.replace("  version: 1.0.0", "  version: [1.0.0"), encoding="utf-8")
        process.send_signal(signal.SIGHUP)
        time.sleep(3)
        assert process.poll() is None
        assert versions()["baclofen"] == "1.0.0"
        assert httpx.get(f"{base}/cds-services", timeout=5).status_code == 200

        pack_file.write_text(good.replace("  version: 1.0.0", "  version: 1.0.1"), encoding="utf-8")
        process.send_signal(signal.SIGHUP)
        assert _wait(lambda: versions()["baclofen"] == "1.0.1"), "good pack was not swapped in"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert "pack.yaml" in text  # the refused reload was logged with its findings
