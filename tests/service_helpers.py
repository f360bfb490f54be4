"""Helpers for the CDS Hooks service tests: a tiny FHIR server, baclofen orders, signed JWTs, a client.

* :class:`LocalFhir` answers prefetch templates (reads and ``patient=``/``code=`` searches) from a
  list of resources — used both as the EHR's FHIR server (an httpx transport) and to fill
  prefetch the way an EHR honouring our discovery templates would.
* :func:`swap_to_baclofen` turns a reference request's medication orders into baclofen ones.
* :class:`Signer` makes ES384 (and deliberately bad) client JWTs; :class:`CdsClient` is the small
  CDS Hooks client of the integration test.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from cds_engine.store.api import EvaluationRecord, FeedbackRecord
from store_helpers import free_port

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"  # shipped with the repository: tests never need anything outside it
REFERENCE = EXAMPLES / "cds-hooks"
SYNTHEA = EXAMPLES / "synthea"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
BACLOFEN = {
    "197391": "Baclofen 10 MG Oral Tablet",
    "197392": "Baclofen 20 MG Oral Tablet",
}


class RecordingSink:
    """An in-memory evaluation sink. ``known_cards_only``: feedback is accepted only for a card it
    recorded (as the store does); otherwise every feedback is accepted (captures from real clients
    name cards this process never issued)."""

    def __init__(self, known_cards_only: bool = True) -> None:
        self.known_cards_only = known_cards_only
        self.evaluations: list[EvaluationRecord] = []
        self.feedback: list[FeedbackRecord] = []

    def record_evaluation(self, record: EvaluationRecord) -> None:
        self.evaluations.append(record)

    def record_feedback(self, feedback: FeedbackRecord) -> bool:
        self.feedback.append(feedback)
        if not self.known_cards_only:
            return True
        return any(a.card_uuid == feedback.card_uuid for r in self.evaluations for a in r.alerts)


def baclofen_concept(code: str = "197391") -> dict[str, Any]:
    return {"coding": [{"system": RXNORM, "code": code, "display": BACLOFEN[code]}], "text": BACLOFEN[code]}


def medication_request(
    *,
    id: str | None = "mr-1",
    patient: str = "p1",
    code: str = "197391",
    dose: float | None = 10,
    unit: str = "mg",
    per_day: float | str | None = 3,
    status: str = "draft",
    **extra: Any,
) -> dict[str, Any]:
    """A draft R4 MedicationRequest for baclofen; ``per_day`` a number (frequency/1 d) or a timing code."""
    instruction: dict[str, Any] = {
        "route": {
            "coding": [{"system": "http://snomed.info/sct", "code": "26643006", "display": "Oral route"}]
        }
    }
    if isinstance(per_day, str):
        instruction["timing"] = {
            "code": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation", "code": per_day}
                ]
            }
        }
    elif per_day is not None:
        instruction["timing"] = {"repeat": {"frequency": per_day, "period": 1, "periodUnit": "d"}}
    if dose is not None:
        instruction["doseAndRate"] = [
            {
                "doseQuantity": {
                    "value": dose,
                    "unit": unit,
                    "system": "http://unitsofmeasure.org",
                    "code": unit,
                }
            }
        ]
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": baclofen_concept(code),
        "subject": {"reference": f"Patient/{patient}"},
        "dosageInstruction": [instruction],
    }
    if id is not None:
        resource["id"] = id
    resource.update(extra)
    return resource


def swap_to_baclofen(request: dict[str, Any]) -> dict[str, Any]:
    """A copy whose MedicationRequests (and the Medications they reference) are baclofen 10/20 mg tablets."""
    out = copy.deepcopy(request)
    codes = iter(["197391", "197392"] * 50)
    bundles = [((out.get("context") or {}).get("draftOrders") or {})]
    bundles += [v for v in (out.get("prefetch") or {}).values() if isinstance(v, dict)]
    for bundle in bundles:
        for resource in _walk(bundle):
            if resource.get("resourceType") == "MedicationRequest":
                if "medicationCodeableConcept" in resource or "medicationReference" not in resource:
                    resource["medicationCodeableConcept"] = baclofen_concept(next(codes))
                    resource.pop("medicationReference", None)
                elif isinstance(resource.get("medicationReference"), dict):
                    resource["medicationReference"]["display"] = BACLOFEN["197391"]
            elif resource.get("resourceType") == "Medication":
                resource["code"] = baclofen_concept("197391")
    return out


def _walk(node: dict[str, Any]) -> Iterable[dict[str, Any]]:
    if node.get("resourceType") != "Bundle":
        if node.get("resourceType"):
            yield node
        return
    for entry in node.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            yield from _walk(resource) if resource.get("resourceType") == "Bundle" else [resource]


def load_reference(name: str) -> dict[str, Any]:
    raw = (REFERENCE / name).read_bytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return json.loads(raw.decode("latin-1"))


# ── a tiny FHIR server ─────────────────────────────────────────────────────────────────────
def _ref_id(value: Any) -> str | None:
    ref = value.get("reference") if isinstance(value, dict) else None
    return ref.rsplit("/", 1)[-1].rsplit(":", 1)[-1] if isinstance(ref, str) else None


class LocalFhir:
    """Reads and simple searches over a list of resources (what our prefetch templates need)."""

    def __init__(self, resources: Iterable[dict[str, Any]]) -> None:
        self.resources = list(resources)
        self.calls: list[str] = []

    def read(self, rtype: str, rid: str) -> dict[str, Any] | None:
        return next(
            (r for r in self.resources if r.get("resourceType") == rtype and r.get("id") == rid), None
        )

    def search(self, rtype: str, params: dict[str, list[str]]) -> dict[str, Any]:
        patient = (params.get("patient") or [None])[0]
        codes = {c for value in params.get("code", []) for c in value.split(",")}
        found = []
        for r in self.resources:
            if r.get("resourceType") != rtype:
                continue
            subject = _ref_id(r.get("subject") or r.get("patient"))
            if patient is not None and subject != patient:
                continue
            if codes:
                have = {f"{c.get('system')}|{c.get('code')}" for c in (r.get("code") or {}).get("coding", [])}
                if not have & codes:
                    continue
            found.append(r)
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in found],
        }

    def get(self, relative: str) -> dict[str, Any] | None:
        """Answer a relative read/search URL (None: not found)."""
        parts = urlsplit(relative)
        path = parts.path.strip("/")
        if "/" in path:
            rtype, rid = path.split("/", 1)
            return self.read(rtype, rid)
        return self.search(path, parse_qs(parts.query))

    def prefetch(self, templates: dict[str, str], context: dict[str, str]) -> dict[str, Any]:
        """What an EHR honouring our templates sends: every key filled, null when a read finds nothing."""
        out: dict[str, Any] = {}
        for key, template in templates.items():
            url = template
            for name, value in context.items():
                url = url.replace("{{context." + name + "}}", value)
            if "{{" in url:
                continue
            out[key] = self.get(url)
        return out

    def transport(self, base: str = "https://ehr.example/fhir") -> httpx.MockTransport:
        prefix = urlsplit(base).path.rstrip("/")

        def handle(request: httpx.Request) -> httpx.Response:
            relative = request.url.path[len(prefix) :]
            if request.url.query:
                relative += "?" + request.url.query.decode()
            if request.method == "POST" and relative.endswith("/_search"):  # FHIR search by POST
                relative = relative[: -len("/_search")] + "?" + request.content.decode()
            self.calls.append(relative)
            body = self.get(relative)
            if body is None:
                return httpx.Response(
                    404,
                    json={
                        "resourceType": "OperationOutcome",
                        "issue": [{"severity": "error", "code": "not-found"}],
                    },
                )
            return httpx.Response(200, json=body)

        return httpx.MockTransport(handle)


# ── Synthea ────────────────────────────────────────────────────────────────────────────────
def synthea_files(limit: int) -> list[Path]:
    """A few patients from each dialect (smart-on-fhir, Exafluence QI-Core) with eGFR and medicines."""
    import csv

    rows = list(csv.DictReader((SYNTHEA / "manifest.csv").open(encoding="utf-8")))
    rows = [
        r
        for r in rows
        if r["deceased"] == "0" and int(r["n_egfr_obs"] or 0) > 0 and int(r["n_medication_requests"] or 0) > 0
    ]
    smart = [r for r in rows if r["file"].startswith("smart")][: (limit + 1) // 2]
    exf = [r for r in rows if r["file"].startswith("exf")][: limit // 2]
    return [SYNTHEA / r["file"] for r in smart + exf]


def synthea_resources(path: Path) -> list[dict[str, Any]]:
    from cds_engine.sources.fhir import bundle_resources

    with gzip.open(path) as fh:
        return bundle_resources(json.load(fh))


# ── client JWTs ────────────────────────────────────────────────────────────────────────────
class Signer:
    """An EHR's signing key (ES384) and the JWK Set it publishes."""

    def __init__(self, issuer: str = "https://ehr.example", kid: str | None = None) -> None:
        self.issuer = issuer
        self.kid = kid or str(uuid.uuid4())
        self.key = ec.generate_private_key(ec.SECP384R1())

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "alg": "ES384", "use": "sig"})
        return {"keys": [jwk]}

    def issuers_file(self, directory: Path) -> Path:
        (directory / "jwks.json").write_text(json.dumps(self.jwks()), encoding="utf-8")
        path = directory / "trusted-issuers.json"
        path.write_text(json.dumps({"issuers": {self.issuer: {"jwks_file": "jwks.json"}}}), encoding="utf-8")
        return path

    def token(
        self,
        aud: str,
        *,
        exp_in: float = 300,
        iat_shift: float = 0,
        jti: str | None = None,
        kid: str | None = None,
        alg: str = "ES384",
        key: Any = None,
        iss: str | None = None,
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": iss or self.issuer,
            "aud": aud,
            "exp": int(now + exp_in),
            "iat": int(now + iat_shift),
            "jti": jti or str(uuid.uuid4()),
        }
        headers = {"kid": kid or self.kid, "typ": "JWT"}
        if alg == "none":
            return jwt.encode(claims, None, algorithm="none", headers=headers)
        return jwt.encode(claims, key if key is not None else self.key, algorithm=alg, headers=headers)


class CdsClient:
    """The small CDS Hooks client of the tests: signs every call with ``aud`` = the URL called."""

    def __init__(self, base: str, signer: Signer | None, http: httpx.Client | None = None) -> None:
        self.base = base.rstrip("/")
        self.signer = signer
        self.http = http or httpx.Client(timeout=20)

    def _headers(self, url: str, token: str | None) -> dict[str, str]:
        if token is None and self.signer is not None:
            token = self.signer.token(url)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def discovery(self, token: str | None = None) -> httpx.Response:
        url = f"{self.base}/cds-services"
        return self.http.get(url, headers=self._headers(url, token))

    def call(self, service_id: str, body: dict[str, Any], token: str | None = None) -> httpx.Response:
        url = f"{self.base}/cds-services/{service_id}"
        return self.http.post(url, json=body, headers=self._headers(url, token))

    def feedback(self, service_id: str, body: dict[str, Any], token: str | None = None) -> httpx.Response:
        url = f"{self.base}/cds-services/{service_id}/feedback"
        return self.http.post(url, json=body, headers=self._headers(url, token))


def hook_request(
    hook: str,
    patient: str,
    drafts: list[dict[str, Any]],
    *,
    prefetch: dict[str, Any] | None = None,
    fhir_server: str | None = None,
    encounter: str | None = None,
    token: str | None = "secret",
) -> dict[str, Any]:
    """A CDS Hooks request for ``drafts`` (order-select selects the first one)."""
    context: dict[str, Any] = {
        "userId": "Practitioner/example",
        "patientId": patient,
        "draftOrders": {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": d} for d in drafts],
        },
    }
    if encounter:
        context["encounterId"] = encounter
    if hook == "order-select":
        context["selections"] = [f"MedicationRequest/{drafts[0]['id']}"]
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
    if fhir_server:
        body["fhirServer"] = fhir_server
        if token:
            body["fhirAuthorization"] = {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "patient/*.read",
                "subject": "cds-engine",
            }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def wait_for(
    condition: Callable[[], object],
    timeout: float = 30.0,
    *,
    interval: float = 0.1,
    what: str = "the condition",
    ignoring: tuple[type[BaseException], ...] = (),
) -> None:
    """Poll ``condition`` until it holds; after ``timeout`` seconds an AssertionError naming ``what``.

    The one "eventually" of the suite (stores draining, workers reloading, replacements starting).
    An exception of a type in ``ignoring`` counts as "not yet" (e.g. ``httpx.HTTPError`` while a
    server is still starting); any other propagates at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except ignoring:
            pass
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not hold within {timeout:g} s")
        time.sleep(interval)


class InertEngineHolder:
    """Stands in for ``serve``'s hot-reloading engine holder in tests about ``serve``'s own set-up
    (options, environment) run in-process with uvicorn replaced: no packs loaded, no file watcher."""

    def __init__(self, *_: Any) -> None:
        pass

    def start(self) -> InertEngineHolder:
        return self

    def install_sighup(self) -> None:
        pass

    def stop(self) -> None:
        pass


@contextmanager
def uvicorn_in_thread(app: Any, **options: Any) -> Iterator[int]:
    """An in-process uvicorn server for ``app`` on a free loopback port, in a thread; yields the port.

    For tests of the HTTP layer itself (protocol classes, keep-alive); a whole service runs as a real
    process with :func:`serve_process`. ``options`` go to ``uvicorn.Config`` (``http=``, ``loop=``,
    ``timeout_keep_alive=``...); lifespan off and warnings-only logs unless given."""
    import threading

    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                            **{"lifespan": "off", "log_level": "warning", **options})
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield config.port
    finally:
        server.should_exit = True
        thread.join(timeout=5)


def wait_until_up(base: str, process: subprocess.Popen[bytes], *, path: str = "/healthz",
                  log: Path | None = None, timeout: float = 300.0) -> None:
    """Poll ``GET base + path`` until it answers 200 (tests and benchmarks that start a server).

    Raises if ``process`` exits first or after ``timeout`` s — a deadline, not a timing: a busy
    machine starts slowly. ``log``: the server's log, shown in the error."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            shown = f":\n{log.read_text()}" if log else ""
            raise RuntimeError(f"the server did not start{shown}")
        time.sleep(0.2)


@contextmanager
def serve_process(
    args: list[str], workdir: Path, *, env: dict[str, str] | None = None, timeout: float = 60.0
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """Run a real ``cds-engine serve ARGS`` on a free loopback port until the block ends.

    Yields (base URL, process, log path). The log is ``workdir/server.log``; the server is stopped
    (SIGTERM, then SIGKILL) on exit, and a start that fails raises with the log's text. ``{base}``
    in an argument becomes the base URL (e.g. ``--public-url {base}``).
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [arg.replace("{base}", base) for arg in args]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    environment.pop("CDS_DATABASE_URL", None)
    log_path = workdir / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cds_engine.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *args,
            ],
            cwd=workdir,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_up(base, process, log=log_path, timeout=timeout)
            yield base, process, log_path
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has ended (gone, or a zombie its parent has not reaped yet)."""
    import psutil

    try:
        return psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return True


def stored_per_hook_instance(store: Any) -> dict[str, int]:
    """Evaluation rows per hookInstance in ``store`` (an opened evaluation store)."""
    from sqlalchemy import func, select

    from cds_engine.store.models import Evaluation

    with store.session() as s:
        rows = s.execute(select(Evaluation.hook_instance, func.count())
                         .group_by(Evaluation.hook_instance)).all()
    return {h: n for h, n in rows}


def healthz_on(conn: Any, port: int) -> tuple[str, bytes | None]:
    """The status and raw body of one ``GET /healthz`` on an open socket (closed after), or the
    error's name and None — for tests that must use a connection made at a chosen moment."""
    try:
        conn.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    except OSError as exc:
        return type(exc).__name__, None
    finally:
        conn.close()
    if not data:
        return "closed without an answer", None
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b" ", 2)[1].decode(), body
