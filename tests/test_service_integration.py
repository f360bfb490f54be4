"""The real ``cds-engine serve`` process on loopback, driven by a small CDS client with ES384 JWTs.

Covers discovery, order-select and order-sign for Synthea patients with a baclofen order added
(prefetch filled from our own discovery templates, as an EHR would), feedback, and the token
cases that must be refused: expired, wrong ``aud``, unknown ``kid``, ``alg: none``, HS256,
a replayed ``jti``, and none at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.service_helpers import (
    REPO,
    CdsClient,
    LocalFhir,
    Signer,
    hook_request,
    medication_request,
    serve_process,
    synthea_files,
    synthea_resources,
)

from cds_engine.service.validate import response_problems


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Signer]]:
    workdir: Path = tmp_path_factory.mktemp("serve")
    signer = Signer(issuer="https://ehr.test.example")
    issuers = signer.issuers_file(workdir)
    args = ["--rules", str(REPO / "rules"), "--db", "none", "--trusted-issuers", str(issuers)]
    args += ["--public-url", "{base}"]  # required with authentication on (security issue 15, item 7)
    with serve_process(args, workdir) as (base, _process, log_path):
        yield base, signer
    server_log = log_path.read_text()
    assert "Traceback" not in server_log, server_log


@pytest.fixture(scope="module")
def client(server) -> CdsClient:
    base, signer = server
    return CdsClient(base, signer)


@pytest.fixture(scope="module")
def services(client) -> dict[str, dict]:
    response = client.discovery()
    assert response.status_code == 200, response.text
    return {s["id"]: s for s in response.json()["services"]}


def test_discovery(services, pack):
    assert {s["hook"] for s in services.values()} == {"order-select", "order-sign", "patient-view"}
    orders = [s for s in services.values() if s["hook"] != "patient-view"]
    assert all(s["prefetch"]["observations"].count("http://loinc.org|") > 20 for s in orders)
    # chart open asks for the active medicines only (issue 21)
    view = next(s for s in services.values() if s["hook"] == "patient-view")
    assert set(view["prefetch"]) == {"activeMedicationRequests", "activeMedicationStatements"}


def test_synthea_orders_select_sign_and_feedback(client, services, pack):
    rule_ids = {r.spec.id for r in pack.rules} | {"missing-data", "data-unavailable"}
    seen_rules: set[str] = set()
    for n, path in enumerate(synthea_files(4)):
        resources = synthea_resources(path)
        patient = next(r for r in resources if r["resourceType"] == "Patient")["id"]
        if n % 2:  # an ongoing baclofen order: the draft becomes a dose change
            resources.append(
                {
                    **medication_request(id=f"home-{n}", patient=patient, dose=10, status="active"),
                    "authoredOn": "2024-01-01",
                }
            )
        ehr = LocalFhir(resources)
        dose, per_day = [(20, 1), (20, 4), (40, 4), (10, 3)][n]
        draft = medication_request(
            id=f"draft-{n}", patient=patient, code="197392", dose=dose, per_day=per_day
        )
        for hook in ("order-select", "order-sign"):
            sid = f"baclofen-{hook}"
            prefetch = ehr.prefetch(services[sid]["prefetch"], {"patientId": patient})
            response = client.call(sid, hook_request(hook, patient, [draft], prefetch=prefetch))
            assert response.status_code == 200, response.text
            body = response.json()
            assert response_problems(body) == []
            codes = {c["source"]["topic"]["code"] for c in body["cards"]}
            assert codes <= rule_ids, codes
            assert all(c["source"]["topic"]["system"] == pack.spec.pack.url for c in body["cards"])
            seen_rules |= codes
        card = body["cards"][0]
        feedback = {
            "feedback": [
                {
                    "card": card["uuid"],
                    "outcome": "overridden",
                    "overrideReason": {"reason": card["overrideReasons"][0], "userComment": "ok"},
                    "outcomeTimestamp": "2025-03-01T12:00:00Z",
                }
            ]
        }
        answer = client.feedback("baclofen-order-sign", feedback)
        assert answer.status_code == 200, answer.text
    assert any(code.startswith("BAC-") for code in seen_rules)
    assert "BAC-D01" in seen_rules  # 40 mg four times daily exceeds the labeled maximum


@pytest.mark.parametrize(
    "case",
    ["expired", "wrong-aud", "unknown-kid", "alg-none", "hs256", "no-token", "untrusted-iss", "future-iat"],
)
def test_bad_tokens_are_refused(server, client, case):
    base, signer = server
    url = f"{base}/cds-services"
    token = {
        "expired": lambda: signer.token(url, exp_in=-300),
        "wrong-aud": lambda: signer.token(f"{base}/cds-services/baclofen-order-sign"),
        "unknown-kid": lambda: signer.token(url, kid="not-a-known-kid"),
        "alg-none": lambda: signer.token(url, alg="none"),
        "hs256": lambda: signer.token(url, alg="HS256", key="a-shared-secret-of-sufficient-length-32b"),
        "no-token": lambda: None,
        "untrusted-iss": lambda: signer.token(url, iss="https://evil.example"),
        "future-iat": lambda: signer.token(url, iat_shift=600, exp_in=900),
    }[case]()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url, headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.json()["issue"][0]["diagnostics"] == "unauthorized"  # no detail for the caller


def test_replayed_jti_is_refused(server):
    base, signer = server
    url = f"{base}/cds-services"
    token = signer.token(url)
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 401


def test_service_and_feedback_need_their_own_aud(server, client):
    base, signer = server
    discovery_token = signer.token(f"{base}/cds-services")
    body = hook_request("order-sign", "p1", [medication_request()])
    assert client.call("baclofen-order-sign", body, token=discovery_token).status_code == 401
    feedback = {
        "feedback": [{"card": "x", "outcome": "overridden", "outcomeTimestamp": "2025-03-01T12:00:00Z"}]
    }
    wrong = signer.token(f"{base}/cds-services/baclofen-order-sign")
    assert client.feedback("baclofen-order-sign", feedback, token=wrong).status_code == 401
    assert client.feedback("baclofen-order-sign", feedback).status_code == 200
