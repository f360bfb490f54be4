"""Client key rotation: a new ``kid`` in an issuer's JWK Set is honoured without a restart.

Both ways an issuer's keys are configured: a local JWK Set file (re-read whenever it changes, so
a removed key is refused at once too) and an allow-listed https URL (re-fetched on an unknown
``kid``, at most once per ``jwks_refresh_seconds``, so a flood of made-up kids cannot turn the
service into a client hammering the issuer). Last, the real app with a trusted-issuers file.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from tests.service_helpers import Signer

from cds_engine.service import AuthSettings, create_app
from cds_engine.service.auth import AuthError, JwtVerifier, TrustedIssuer

AUD = "https://cds.example/cds-services"
ISSUER = "https://ehr.rotation.example"


def both_keys(old: Signer, new: Signer) -> dict:
    return {"keys": old.jwks()["keys"] + new.jwks()["keys"]}


def write(path: Path, jwks: dict, bump: int) -> None:
    path.write_text(json.dumps(jwks), encoding="utf-8")
    stat = path.stat()  # make the change visible even on coarse-mtime file systems
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 1_000_000_000))


def test_new_kid_in_the_jwks_file_is_picked_up_and_a_removed_one_refused(tmp_path):
    old, new = Signer(ISSUER), Signer(ISSUER)
    jwks_path = tmp_path / "jwks.json"
    write(jwks_path, old.jwks(), 0)
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps({"issuers": {ISSUER: {"jwks_file": "jwks.json"}}}), encoding="utf-8")
    verifier = JwtVerifier(AuthSettings.from_file(issuers))

    async def run() -> None:
        await verifier.verify(old.token(AUD), AUD)
        with pytest.raises(AuthError, match="unknown kid"):
            await verifier.verify(new.token(AUD), AUD)
        write(jwks_path, both_keys(old, new), 1)  # the EHR publishes its next key
        assert (await verifier.verify(new.token(AUD), AUD))["iss"] == ISSUER
        await verifier.verify(old.token(AUD), AUD)  # both valid during the overlap
        write(jwks_path, new.jwks(), 2)  # the old key is retired
        with pytest.raises(AuthError, match="unknown kid"):
            await verifier.verify(old.token(AUD), AUD)
        jwks_path.write_text('{"keys": [', encoding="utf-8")  # half-written: last good keys kept
        await verifier.verify(new.token(AUD), AUD)
        jwks_path.unlink()
        await verifier.verify(new.token(AUD), AUD)

    asyncio.run(run())


def test_new_kid_at_the_jwks_url_is_fetched_on_demand_with_a_rate_limit():
    old, new = Signer(ISSUER), Signer(ISSUER)
    url = "https://ehr.rotation.example/.well-known/jwks.json"
    published = {"jwks": old.jwks()}
    fetches: list[float] = []
    now = [1_000.0]

    def serve(request: httpx.Request) -> httpx.Response:
        fetches.append(now[0])
        return httpx.Response(200, json=published["jwks"])

    settings = AuthSettings(issuers={ISSUER: TrustedIssuer(jwks_url=url)}, jwks_refresh_seconds=60)
    client = httpx.AsyncClient(transport=httpx.MockTransport(serve))
    verifier = JwtVerifier(settings, client=client)
    real_clock = verifier.clock
    verifier.clock = lambda: real_clock() + now[0] - 1_000.0  # tokens stay valid; time moves on

    async def run() -> None:
        await verifier.verify(old.token(AUD), AUD)
        assert len(fetches) == 1
        published["jwks"] = both_keys(old, new)
        for _ in range(20):  # a flood of a kid not (yet) known: no fetch inside the minute
            with pytest.raises(AuthError):
                await verifier.verify(new.token(AUD), AUD)
        assert len(fetches) == 1
        now[0] += 61
        assert (await verifier.verify(new.token(AUD), AUD))["iss"] == ISSUER  # one re-fetch finds it
        assert len(fetches) == 2
        for _ in range(5):
            await verifier.verify(new.token(AUD), AUD)
            await verifier.verify(old.token(AUD), AUD)
        assert len(fetches) == 2  # known kids never trigger a fetch
        with pytest.raises(AuthError):
            await verifier.verify(Signer(ISSUER).token(AUD), AUD)
        assert len(fetches) == 2  # within the minute after the last fetch

    asyncio.run(run())
    asyncio.run(client.aclose())


def test_the_running_app_accepts_a_rotated_key_without_restart(engine, tmp_path):
    old, new = Signer(ISSUER), Signer(ISSUER)
    issuers = old.issuers_file(tmp_path)  # writes jwks.json + trusted-issuers.json
    app = create_app(lambda: engine, auth=AuthSettings.from_file(issuers))
    with TestClient(app, base_url="http://cds.test") as client:
        url = "http://cds.test/cds-services"

        def call(signer: Signer) -> int:
            return client.get(url, headers={"Authorization": f"Bearer {signer.token(url)}"}).status_code

        assert call(old) == 200
        assert call(new) == 401
        write(tmp_path / "jwks.json", both_keys(old, new), 1)
        assert call(new) == 200
        assert call(old) == 200
