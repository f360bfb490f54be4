"""Hot reload in the running service: SIGHUP swaps a good pack in, a broken one never replaces it.

Also checks governance at the HTTP edge: a draft pack runs silently, so discovery offers no
service for it.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import httpx
from tests.service_helpers import serve_process, wait_for

REPO = Path(__file__).resolve().parents[1]




def test_sighup_reload_keeps_last_good_pack(tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    pack_file = rules / "baclofen" / "pack.yaml"
    good = pack_file.read_text(encoding="utf-8")
    args = ["--no-auth", "--db", "none", "--rules", str(rules)]
    with serve_process(args, tmp_path) as (base, process, _log):

        def versions() -> dict[str, str]:
            return {p["id"]: p["version"] for p in httpx.get(f"{base}/healthz", timeout=5).json()["packs"]}

        services = httpx.get(f"{base}/cds-services", timeout=5).json()["services"]
        assert {s["id"] for s in services} == {
            "baclofen-order-select",
            "baclofen-order-sign",
            "baclofen-patient-view",
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
        wait_for(lambda: versions()["baclofen"] == "1.0.1", interval=0.2, what="the good pack swapped in",
                 ignoring=(httpx.HTTPError,))
    text = (tmp_path / "server.log").read_text()
    assert "pack.yaml" in text  # the refused reload was logged with its findings
