"""Metrics through the real ``serve`` (issue #22 item 2): the loopback port, the bearer-token route
with several workers (prometheus-client multiprocess mode), JSON logs, and no patient data anywhere
in the exposition.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from cds_engine.engine import Engine
from cds_engine.service.discovery import prefetch_templates
from conftest import RULES
from service_helpers import LocalFhir, hook_request, medication_request, serve_process
from store_helpers import free_port

# a patient whose name, birth date and MRN must never reach the exposition
FAMILY, GIVEN, BIRTH, MRN = "Quixotlewick", "Zebediah", "1941-03-07", "MRN-99812345"


def _prefetch() -> dict[str, Any]:
    patient = {"resourceType": "Patient", "id": "metrics-p1", "birthDate": BIRTH, "gender": "female",
               "name": [{"family": FAMILY, "given": [GIVEN]}],
               "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                    "code": "MR"}]}, "value": MRN}]}
    pack = next(p for p in Engine.from_dir(RULES, site=False).packs if p.id == "baclofen")
    return LocalFhir([patient]).prefetch(prefetch_templates(pack), {"patientId": "metrics-p1"})


def _orders(base: str, n: int) -> None:
    prefetch = _prefetch()
    for _ in range(n):
        body = hook_request("order-sign", "metrics-p1", [medication_request(patient="metrics-p1", dose=30,
                                                                             per_day=4)], prefetch=prefetch)
        answer = httpx.post(f"{base}/cds-services/baclofen-order-sign", json=body, timeout=30)
        assert answer.status_code == 200, answer.text


def _no_patient_data(text: str) -> None:
    for value in (FAMILY, GIVEN, BIRTH, MRN, "metrics-p1", "Practitioner/example"):
        assert value not in text, f"{value!r} in the metrics exposition"


def _value(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def test_loopback_port_counts_cards_and_logs_are_json(tmp_path: Path) -> None:
    port = free_port()
    args = ["--no-auth", "--db", f"sqlite:///{tmp_path}/m.db", "--rules", str(RULES),
            "--metrics-port", str(port), "--log-format", "json"]
    with serve_process(args, tmp_path) as (base, _process, log_path):
        _orders(base, 3)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert httpx.get(f"{base}/metrics", timeout=10).status_code == 404, "no token file: not on this port"
        lines = [line for line in log_path.read_text().splitlines() if line.startswith("{")]
    shown = [line for line in text.splitlines() if line.startswith("cds_cards_total{")
             and 'outcome="shown"' in line and 'pack="baclofen"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in shown) >= 3
    assert 'rule="BAC-D01"' in text
    assert _value(text, 'cds_request_duration_seconds_count{service="baclofen-order-sign",status="2xx"}') == 3
    _no_patient_data(text)
    assert lines and all(json.loads(line)["level"] for line in lines), "every log line is a JSON object"


def test_token_route_sums_every_worker(tmp_path: Path) -> None:
    token_file = tmp_path / "metrics.token"
    token_file.write_text("k" * 48 + "\n")
    args = ["--no-auth", "--db", f"sqlite:///{tmp_path}/m.db", "--rules", str(RULES), "--workers", "2",
            "--metrics-token-file", str(token_file)]
    with serve_process(args, tmp_path, timeout=120) as (base, _process, _log):
        _orders(base, 8)
        assert httpx.get(f"{base}/metrics", timeout=10).status_code == 401
        deadline = time.monotonic() + 10
        auth = {"Authorization": f"Bearer {'k' * 48}"}
        series = 'cds_request_duration_seconds_count{service="baclofen-order-sign",status="2xx"}'
        while True:
            text = httpx.get(f"{base}/metrics", headers=auth, timeout=10).text
            count = _value(text, series)
            if count == 8 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert count == 8, "a scrape sums the workers' values"
    _no_patient_data(text)
