"""Client authentication: the signed JWT every CDS Hooks call carries (spec §Security, best practices).

Checks, in order, all with PyJWT (no hand-written crypto): the header ``alg`` is on our list
(ES384, RS384 — never ``none`` or an HMAC, never taken from the token), ``kid`` is present; the
``iss`` is on the allow-list, which maps it to a JWK Set (a file, or an allow-listed URL fetched
and cached; a ``jku`` header must be one of the allow-listed URLs); the key with that ``kid``
verifies the signature; ``aud`` equals the URL that was called; ``exp`` and ``iat`` are valid
within a small clock skew and the lifetime is bounded; the ``jti`` was not seen before (kept until
the token expires, in the replay store all workers and hosts share: :mod:`cds_engine.service.replay`).
Any failure is a bare 401: the reason goes to the log (with ``iss``/``kid``, never the token), not
to the caller.

Trusted issuers file (JSON or YAML)::

    {"issuers": {
       "https://sandbox.cds-hooks.org": {"jwks_file": "sandbox-jwks.json"},
       "https://ehr.example.org": {"jwks_url": "https://ehr.example.org/.well-known/jwks.json",
                                   "fhir_servers": ["https://ehr.example.org/fhir/r4"]}}}

``fhir_servers`` is the allow-list of ``fhirServer`` bases for that issuer's call-backs
(:mod:`cds_engine.service.callbacks`); an issuer without it gets no call-backs.

Relative ``jwks_file`` paths are read relative to the issuers file.
"""

from __future__ import annotations

import binascii
import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import yaml
from jwt.utils import base64url_decode, base64url_encode
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cds_engine.service.replay import ReplayCache, ReplayGuard, ReplaySettings

__all__ = ["AuthError", "AuthSettings", "JwtVerifier", "ReplayCache", "TrustedIssuer"]

log = logging.getLogger("cds_engine.service.auth")

ALLOWED_ALGORITHMS = ("ES384", "RS384")
_PARSED_KEYS_KEPT = 64  # parsed public keys kept per verifier (a JWK Set holds a handful)
_BASE64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"  # PyJWT's alphabet


class AuthError(Exception):
    """Why a token was refused (logged, never returned)."""


class _OneParseJWS(jwt.PyJWS):
    """PyJWT's JWS layer, remembering the parts of the last token it split and decoded.

    :meth:`JwtVerifier.verify` reads a token twice — unverified (``alg``, ``kid``, ``iss`` pick the
    key) and then verified — and PyJWT splits it, checks and decodes its three base64url parts and
    parses its header both times (a Python step per token character: most of PyJWT's own cost per
    call, issue 19). ``_load`` is a function of the token alone, so the second call takes the
    first one's result for the same token; a different token, or a failure, is decoded as ever.
    """

    def __init__(self) -> None:
        super().__init__()
        self._last: tuple[str | bytes, tuple[bytes, bytes, dict[str, Any], bytes]] | None = None

    @staticmethod
    def _decode_base64url_segment(segment: bytes, name: str) -> bytes:
        """PyJWT's segment decoding, its alphabet check made in one C call for a plain segment.

        PyJWT tests each character of a segment against the base64url alphabet in a Python
        generator (a step per token character, issue 19). A segment of alphabet characters alone
        (no ``=`` padding) whose length is not 1 mod 4 passes every one of its checks up to the
        decoding, which is then PyJWT's own (decode, the canonical re-encoding compared, the same
        error); any other segment is decoded by PyJWT itself.
        """
        if type(segment) is not bytes or segment.translate(None, _BASE64URL) or len(segment) % 4 == 1:
            return jwt.PyJWS._decode_base64url_segment(segment, name)
        try:
            decoded = base64url_decode(segment)
        except (TypeError, binascii.Error) as err:
            raise jwt.DecodeError(f"Invalid {name} padding") from err
        if base64url_encode(decoded) != segment:
            raise jwt.DecodeError(f"Invalid {name} padding")
        return decoded

    def _load(self, jwt: str | bytes) -> tuple[bytes, bytes, dict[str, Any], bytes]:
        last = self._last
        if last is not None and last[0] == jwt and type(last[0]) is type(jwt):
            return last[1]
        loaded = super()._load(jwt)
        self._last = (jwt, loaded)
        return loaded


def _one_parse_jwt() -> jwt.PyJWT:
    """A PyJWT like the module's own (``jwt.decode``: default options) over a :class:`_OneParseJWS`."""
    decoder = jwt.PyJWT()
    decoder._jws = _OneParseJWS()
    return decoder


class TrustedIssuer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jwks_file: Path | None = None
    jwks_url: str | None = Field(None, description="Allow-listed JWK Set URL (https)")
    jwks: dict[str, Any] | None = Field(None, description="The JWK Set itself, inline")
    fhir_servers: list[str] = Field(
        default_factory=list,
        description="fhirServer bases this issuer may name for call-backs (none listed: no call-backs)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> TrustedIssuer:
        if sum(x is not None for x in (self.jwks_file, self.jwks_url, self.jwks)) != 1:
            raise ValueError("give exactly one of jwks_file, jwks_url, jwks")
        if self.jwks_url is not None and not self.jwks_url.startswith("https://"):
            raise ValueError("jwks_url must be https")
        return self


class _IssuersFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    issuers: dict[str, TrustedIssuer] = Field(..., min_length=1)


@dataclass
class AuthSettings:
    """Who may call us and how strictly tokens are checked."""

    issuers: dict[str, TrustedIssuer]
    algorithms: tuple[str, ...] = ALLOWED_ALGORITHMS
    leeway_seconds: float = 60.0
    max_lifetime_seconds: float = 3600.0
    public_base_url: str | None = None  # when behind a proxy: the base URL clients call (aud)
    jwks_cache_seconds: float = 3600.0
    # an unknown kid re-fetches an issuer's JWK Set URL (key rotation without restart), at most this often
    jwks_refresh_seconds: float = 60.0
    # where seen jti values are kept (shared by workers and hosts), its deadline and failure policy
    replay: ReplaySettings = field(default_factory=ReplaySettings)

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> AuthSettings:
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
        parsed = _IssuersFile.model_validate(raw)
        issuers = {}
        for iss, issuer in parsed.issuers.items():
            if issuer.jwks_file is not None:
                jwks_path = (
                    issuer.jwks_file if issuer.jwks_file.is_absolute() else path.parent / issuer.jwks_file
                )
                json.loads(jwks_path.read_text(encoding="utf-8"))  # unreadable at start: refuse to start
                # re-read on an unknown kid
                issuer = issuer.model_copy(update={"jwks_file": jwks_path.resolve()})
            issuers[iss] = issuer
        return cls(issuers=issuers, **options)

    def __post_init__(self) -> None:
        bad = [a for a in self.algorithms if a.upper() == "NONE" or a.upper().startswith("HS")]
        if bad:
            raise ValueError(f"symmetric or 'none' algorithms are not allowed: {bad}")


class JwtVerifier:
    def __init__(
        self,
        settings: AuthSettings,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.client = client
        self.clock = clock
        self.replays = ReplayGuard(settings.replay, clock=clock)
        self._remote: dict[str, tuple[float, dict[str, Any]]] = {}  # url -> (fetched at, jwks)
        self._failed: dict[str, float] = {}  # url -> when a first fetch failed (backs off)
        self._files: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}  # path -> ((mtime, size), jwks)
        self._parsed: dict[tuple[str, str], jwt.PyJWK] = {}  # (alg, JWK as JSON) -> key object
        self._seen: dict[tuple[int, str], tuple[dict[str, Any], dict[str, Any], jwt.PyJWK]] = {}
        self._jwt = _one_parse_jwt()  # the token's parts decoded once for both reads of it

    def _file_jwks(self, path: Path) -> dict[str, Any]:
        """The JWK Set file, re-read whenever it changed (mtime or size) since it was last read.

        Key rotation and revocation take effect on the next token, without a restart: a new
        ``kid`` written into the file is found, a removed one is refused. The cost is one ``stat``
        per token, small beside the signature check. A file that is missing or half-written keeps
        the last good set.
        """
        cached = self._files.get(path)
        try:
            stat = path.stat()
            signature = (stat.st_mtime_ns, stat.st_size)
            if cached is not None and cached[0] == signature:
                return cached[1]
            jwks = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            if cached is None:
                raise AuthError(f"JWK Set file unreadable: {type(exc).__name__}") from exc
            log.warning("JWK Set file %s unreadable (%s): last good keys kept", path, type(exc).__name__)
            return cached[1]
        if cached is not None:
            log.info("JWK Set file %s changed: re-read (key rotation)", path)
        self._files[path] = (signature, jwks)
        return jwks

    async def _jwks(self, issuer: TrustedIssuer, jku: str | None, refresh: bool) -> dict[str, Any]:
        if issuer.jwks is not None:
            return issuer.jwks
        if issuer.jwks_file is not None:  # a local file: a jku header is never followed
            return self._file_jwks(issuer.jwks_file)
        url = issuer.jwks_url
        if jku is not None and jku != url:
            raise AuthError("jku not allow-listed for this issuer")
        assert url is not None
        cached = self._remote.get(url)
        now = self.clock()
        stale = cached is None or now - cached[0] > self.settings.jwks_cache_seconds
        recently = cached is not None and now - cached[0] < self.settings.jwks_refresh_seconds
        if stale or (refresh and not recently):
            if self.client is None:
                raise AuthError("no HTTP client to fetch the JWK Set")
            failed = self._failed.get(url)
            if cached is None and failed is not None and now - failed < self.settings.jwks_refresh_seconds:
                # never fetched: a failure backs off too, so unsigned tokens naming this issuer
                # cannot make us hammer its JWK Set URL (red-team L6)
                raise AuthError("JWK Set unavailable (backing off after a failed fetch)")
            try:
                response = await self.client.get(url, timeout=3.0)
                response.raise_for_status()
                cached = (now, response.json())
                self._failed.pop(url, None)
            except (httpx.HTTPError, ValueError):
                if cached is None:
                    self._failed[url] = now
                    raise
                log.warning("JWK Set %s could not be fetched: last good keys kept", url)
                cached = (now, cached[1])  # rate-limits retries: a kid flood must not hammer the issuer
            self._remote[url] = cached
        assert cached is not None
        return cached[1]

    def _parsed_key(self, jwk: dict[str, Any], alg: str) -> jwt.PyJWK:
        """The key object of a JWK, parsed once per distinct key material (not once per token).

        Keyed by the JWK's full content and the algorithm: a rotated or edited key is a new entry,
        a removed one is never looked up (the JWK Set is still searched by ``kid`` per token).

        The cached JWK Sets hand over the same dict for the same key on every token, so that dict
        (held, so its id cannot be reused) with a copy of its content finds the entry without the
        canonical JSON text (issue 19); a dict whose content changed since is looked up by content.
        """
        seen = self._seen.get((id(jwk), alg))
        if seen is not None and seen[0] is jwk and seen[1] == jwk:
            return seen[2]
        try:
            ident = (alg, json.dumps(jwk, sort_keys=True))
        except (TypeError, ValueError):
            return jwt.PyJWK(jwk, algorithm=alg)
        key = self._parsed.get(ident)
        if key is None:
            key = jwt.PyJWK(jwk, algorithm=alg)
            if len(self._parsed) >= _PARSED_KEYS_KEPT:
                self._parsed.clear()  # a JWK Set churning keys: start afresh, never grow without bound
            self._parsed[ident] = key
        if len(self._seen) >= _PARSED_KEYS_KEPT:
            self._seen.clear()
        self._seen[(id(jwk), alg)] = (jwk, copy.deepcopy(jwk), key)
        return key

    async def _key(self, issuer: TrustedIssuer, kid: str, alg: str, jku: str | None) -> jwt.PyJWK:
        for refresh in (False, True):
            jwks = await self._jwks(issuer, jku, refresh)
            for jwk in jwks.get("keys", []) if isinstance(jwks, dict) else []:
                if isinstance(jwk, dict) and jwk.get("kid") == kid:
                    if jwk.get("use") not in (None, "sig"):
                        raise AuthError("key not for signatures")
                    return self._parsed_key(jwk, alg)
            if issuer.jwks is not None:
                break
        raise AuthError("unknown kid")

    def _unverified(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(header, claims) before any key is known: one parse of the token for a well-formed one.

        A token that does not parse takes the checks one by one, so the logged reason is the
        same as ever (a disallowed ``alg`` or a missing ``kid`` is named before a broken payload).
        """
        try:
            decoded = self._jwt.decode_complete(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            decoded = None
        if decoded is not None:
            return decoded["header"], decoded["payload"]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError("malformed token") from exc
        self._check_header(header)
        try:
            return header, jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthError("malformed token") from exc

    def _check_header(self, header: dict[str, Any]) -> tuple[str, str]:
        """(alg, kid) of a header whose ``alg`` is on our list and that names a ``kid``."""
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.settings.algorithms:
            raise AuthError(f"algorithm {alg!r} not allowed")
        if not isinstance(kid, str) or not kid:
            raise AuthError("no kid")
        return alg, kid

    async def verify(self, token: str, audience: str) -> dict[str, Any]:
        """The token's claims, or :class:`AuthError`."""
        header, unverified = self._unverified(token)
        alg, kid = self._check_header(header)
        iss = unverified.get("iss")
        issuer = self.settings.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise AuthError("issuer not trusted")
        jku = header.get("jku") if isinstance(header.get("jku"), str) else None
        try:
            key = await self._key(issuer, kid, alg, jku)
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            raise AuthError(f"key unavailable: {type(exc).__name__}") from exc
        audiences = _audiences(audience)
        try:
            claims = self._jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=audiences,
                issuer=iss,
                leeway=self.settings.leeway_seconds,
                options={"require": ["iss", "aud", "exp", "iat", "jti"], "verify_aud": True},
            )
        except jwt.InvalidAudienceError as exc:
            raise AuthError("wrong aud") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(type(exc).__name__) from exc
        now = self.clock()
        if float(claims["exp"]) - now > self.settings.max_lifetime_seconds + self.settings.leeway_seconds:
            raise AuthError("token lifetime too long")
        verdict = await self.replays.check(
            iss, str(claims["jti"]), float(claims["exp"]) + self.settings.leeway_seconds
        )
        if verdict != "first-use":
            raise AuthError(_REPLAY_REASONS[verdict])
        return claims

    def close(self) -> None:
        self.replays.close()


_REPLAY_REASONS = {
    "replayed": "jti replayed",
    "quota": "jti refused: issuer's live-id quota reached (or jti too long)",
    "store-unavailable": "jti replay store unavailable (jti_on_store_failure = refuse)",
}


def _audiences(url: str) -> list[str]:
    """Exactly the called URL: no trailing-slash or other variant (security issue 15, item 7)."""
    return [url]
