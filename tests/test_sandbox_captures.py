"""The CDS Hooks Sandbox's captured requests, sent to the real ``cds-engine serve`` as the sandbox sends them.

Each body in ``examples/cds-hooks/sandbox/`` goes to a ``serve`` process with authentication on,
signed the way the sandbox signs (ES384; header ``kid`` + ``jku``; claims iss/aud/exp/iat/jti).
We cannot have the sandbox's private key, so a P-384 key made here is configured as the key set
of the sandbox's issuer. The service evaluates at the capture date (a fixed clock) and must answer
exactly the card set pinned in ``tests/expected/sandbox-NN.json`` (written by
``tools/pin_sandbox_cards.py``; each file's header says it awaits pharmacist review). The
form-opening call (no medication yet) gets 200 and no card; the feedback (a reason Coding without
``display``) gets 200 and is stored; order-select → card → feedback → order-sign is checked in
the store.
"""

from __future__ import annotations

import copy
import json
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tests.service_helpers import REPO, serve_process

from cds_engine.service.validate import response_problems

SANDBOX = REPO / "examples" / "cds-hooks" / "sandbox"
EXPECTED = REPO / "tests" / "expected"
ISSUER = "https://sandbox.cds-hooks.org"
KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"  # the sandbox's kid; our own key stands in for its key
JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
CAPTURE_INSTANT = "2026-12-05T21:48:00+00:00"
CAPTURES = sorted(p.name for p in SANDBOX.glob("[0-9][0-9]-order-*.json"))


class SandboxSigner:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP384R1())

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": KID, "alg": "ES384", "use": "sig"})
        return {"keys": [jwk]}

    def token(self, aud: str) -> str:
        now = round(time.time())
        claims = {"iss": ISSUER, "aud": aud, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
        return jwt.encode(claims, self.key, algorithm="ES384", headers={"typ": "JWT", "kid": KID, "jku": JKU})


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Iterator[tuple[str, SandboxSigner, Path]]:
    workdir: Path = tmp_path_factory.mktemp("sandbox")
    signer = SandboxSigner()
    (workdir / "sandbox-jwks.json").write_text(json.dumps(signer.jwks()), encoding="utf-8")
    issuers = workdir / "trusted-issuers.json"
    issuers.write_text(
        json.dumps(
            {
                "issuers": {
                    ISSUER: {"jwks_file": "sandbox-jwks.json", "fhir_servers": ["http://127.0.0.1:18090/r4"]}
                }
            }
        ),
        encoding="utf-8",
    )
    db = workdir / "cds.db"
    rules = workdir / "rules"  # the baclofen pack and the vocabulary, as tools/pin_sandbox_cards.py pins them
    for part in ("baclofen", "vocabulary"):
        shutil.copytree(REPO / "rules" / part, rules / part)
    args = [
        "--rules",
        str(rules),
        "--db",
        f"sqlite:///{db}",
        "--trusted-issuers",
        str(issuers),
        "--public-url",
        "{base}",
        "--allow-loopback-fhir",
        "--fixed-clock",
        CAPTURE_INSTANT,
    ]
    with serve_process(args, workdir) as (base, _process, log_path):
        yield base, signer, db
    server_log = log_path.read_text()
    assert "Traceback" not in server_log, server_log


def post(sandbox: tuple[str, SandboxSigner, Path], path: str, body: dict[str, Any]) -> httpx.Response:
    base, signer, _ = sandbox
    url = f"{base}{path}"
    return httpx.post(url, json=body, headers={"Authorization": f"Bearer {signer.token(url)}"}, timeout=30)


def capture(name: str) -> dict[str, Any]:
    return json.loads((SANDBOX / name).read_text(encoding="utf-8"))


def card_set(response: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {"rule": c["source"]["topic"]["code"], "indicator": c["indicator"], "summary": c["summary"]}
        for c in response["cards"]
    ]


def test_discovery_with_a_sandbox_shaped_token(sandbox):
    base, signer, _ = sandbox
    url = f"{base}/cds-services"
    response = httpx.get(url, headers={"Authorization": f"Bearer {signer.token(url)}"}, timeout=30)
    assert response.status_code == 200
    assert httpx.get(url, timeout=30).status_code == 401


@pytest.mark.parametrize("name", CAPTURES)
def test_each_capture_gets_the_pinned_card_set(sandbox, name):
    body = capture(name)
    response = post(sandbox, f"/cds-services/baclofen-{body['hook']}", body)
    pinned = json.loads((EXPECTED / f"sandbox-{name[:2]}.json").read_text(encoding="utf-8"))
    assert pinned["review"]["status"] == "awaiting pharmacist review" or (
        pinned["review"]["reviewed_by"] and pinned["review"]["reviewed_on"]
    )
    assert response.status_code == pinned["status"] == 200, response.text
    assert response_problems(response.json()) == []
    assert card_set(response.json()) == pinned["cards"]
    if name.startswith("01-"):
        assert response.json() == {"cards": []}  # the form before a medication is chosen


def test_every_capture_is_pinned():
    assert {f"sandbox-{name[:2]}.json" for name in CAPTURES} == {
        p.name for p in EXPECTED.glob("sandbox-*.json")
    }


def test_captured_feedback_without_display_is_accepted(sandbox):
    response = post(
        sandbox, "/cds-services/baclofen-order-select/feedback", capture("05-feedback-overridden.json")
    )
    assert response.status_code == 200, response.text
    assert response.json()["received"] == 1


def test_select_card_feedback_sign_end_to_end_in_the_store(sandbox):
    _, _, db = sandbox
    select = capture("03-order-select-baclofen-10mg-1-tablet-tid.json")
    select["hookInstance"] = str(uuid.uuid4())
    shown = post(sandbox, "/cds-services/baclofen-order-select", select)
    assert shown.status_code == 200, shown.text
    card = shown.json()["cards"][0]
    feedback = copy.deepcopy(capture("05-feedback-overridden.json"))
    feedback["feedback"][0]["card"] = card["uuid"]
    answer = post(sandbox, "/cds-services/baclofen-order-select/feedback", feedback)
    assert answer.status_code == 200 and answer.json() == {"received": 1}, answer.text
    sign = capture("06-order-sign-baclofen-10mg-1-tablet-tid.json")
    sign["hookInstance"] = str(uuid.uuid4())
    signed = post(sandbox, "/cds-services/baclofen-order-sign", sign)
    assert signed.status_code == 200, signed.text

    deadline = time.monotonic() + 10
    while True:  # the store writes off the request path
        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "SELECT hook, order_key, user_ref FROM evaluations WHERE hook_instance IN (?, ?)",
                (select["hookInstance"], sign["hookInstance"]),
            ).fetchall()
            stored = conn.execute(
                "SELECT f.outcome, f.override_reason_code, f.override_reason_display, a.rule_id"
                " FROM prescriber_feedback f JOIN alerts a ON a.id = f.alert_id WHERE f.card_uuid = ?",
                (card["uuid"],),
            ).fetchall()
        if (len(rows) == 2 and stored) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(r[0] for r in rows) == ["order-select", "order-sign"]
    assert len({r[1] for r in rows}) == 1  # one order from select to sign
    assert {r[2] for r in rows} == {"Practitioner/COREPRACTITIONER1"}
    assert stored == [("overridden", "tolerated-before", None, card["source"]["topic"]["code"])]
