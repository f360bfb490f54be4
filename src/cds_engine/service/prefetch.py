"""Prefetch semantics of CDS Hooks 2.0, and the FHIR call-back when a key is missing.

Per key of our templates:

* present with a resource or Bundle → use it;
* present and ``null`` → the client ran the query and found nothing (no data, not an error);
* present with an ``OperationOutcome`` → the client failed: the data is *unavailable*;
* absent → fetch it from ``fhirServer`` with the ``fhirAuthorization`` bearer token, all keys in
  parallel within one short time budget; a failure or timeout makes it *unavailable*.

Unavailable data never stops the advice: the hook answers with every rule that can still be
evaluated and one card naming the checks that could not be done. Keys the client sent that we
did not ask for (other templates, other naming) are read too — their resources are data.
The access token is used for these calls only: never stored, never logged.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from cds_engine.service.models import HookRequest
from cds_engine.sources.fhir import bundle_resources

__all__ = ["FhirFetcher", "Prefetched", "fill_template", "gather_prefetch"]

log = logging.getLogger("cds_engine.service")
_TOKEN = re.compile(r"\{\{\s*context\.(\w+)\s*\}\}")
_MAX_PAGES = 5
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(slots=True)
class Prefetched:
    resources: list[dict[str, Any]] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # key -> why (no detail from the EHR)
    fetched: list[str] = field(default_factory=list)


def fill_template(template: str, request: HookRequest) -> str | None:
    """Substitute ``{{context.x}}`` tokens; None when a token has no value (the key is not needed)."""
    context = request.context
    values = {"patientId": context.patientId, "encounterId": context.encounterId, "userId": context.userId}
    missing = False

    def sub(match: re.Match[str]) -> str:
        nonlocal missing
        value = values.get(match.group(1))
        if not value:
            missing = True
            return ""
        return str(value)

    filled = _TOKEN.sub(sub, template)
    return None if missing or "{{" in filled else filled


def _secure(base: str) -> bool:
    """Patient data and bearer tokens travel over TLS; plain http only to this machine (local trials)."""
    parts = urlsplit(base)
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK)


def _is_outcome(value: Any) -> bool:
    return isinstance(value, dict) and value.get("resourceType") == "OperationOutcome"


class FhirFetcher:
    """Reads from the EHR's FHIR server with a shared connection pool and a per-hook time budget."""

    def __init__(self, client: httpx.AsyncClient, budget_seconds: float) -> None:
        self.client = client
        self.budget = budget_seconds

    async def get(self, base: str, relative: str, token: str | None) -> list[dict[str, Any]]:
        if not _secure(base):
            raise ValueError("fhirServer is not https (plain http is accepted on loopback only)")
        headers = {"Accept": "application/fhir+json, application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url: str | None = f"{base.rstrip('/')}/{relative.lstrip('/')}"
        out: list[dict[str, Any]] = []
        pages = 0
        while url and pages < _MAX_PAGES:
            response = await self.client.get(url, headers=headers)
            if response.status_code == 404 and "?" not in relative:
                return out  # a read that found nothing: no data
            response.raise_for_status()
            body = response.json()
            if _is_outcome(body):
                raise ValueError("OperationOutcome")
            out.extend(bundle_resources(body))
            pages += 1
            url = next(
                (
                    link.get("url")
                    for link in body.get("link", []) or []
                    if isinstance(link, dict) and link.get("relation") == "next"
                ),
                None,
            )
            if url and not url.startswith(base.rstrip("/")):
                break  # never follow a paging link to another server
        return out

    async def get_many(
        self, base: str, relatives: dict[str, str], token: str | None, budget: float | None = None
    ) -> dict[str, list[dict[str, Any]] | None]:
        """key -> resources, or None where the call failed or ran out of time.

        ``budget``: what is left of the hook's time budget (default: all of it).
        """
        budget = self.budget if budget is None else max(0.0, budget)

        async def one(key: str, relative: str) -> tuple[str, list[dict[str, Any]] | None]:
            try:
                return key, await self.get(base, relative, token)
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("FHIR call-back failed: key=%s error=%s", key, type(exc).__name__)
                return key, None

        tasks = [asyncio.ensure_future(one(k, r)) for k, r in relatives.items()]
        done, pending = await asyncio.wait(tasks, timeout=budget) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        results: dict[str, list[dict[str, Any]] | None] = dict.fromkeys(relatives)
        for task in done:
            key, value = task.result()
            results[key] = value
        if pending:
            log.warning("FHIR call-back budget of %.1fs exceeded for %d key(s)", budget, len(pending))
        return results


async def gather_prefetch(
    request: HookRequest, templates: dict[str, str], fetcher: FhirFetcher | None, budget: float | None = None
) -> Prefetched:
    """All resources of the request's prefetch, plus what had to be fetched; unavailable keys listed."""
    result = Prefetched()
    given = request.prefetch or {}
    to_fetch: dict[str, str] = {}
    for key, template in templates.items():
        if key in given:
            value = given[key]
            if value is None:
                continue
            if _is_outcome(value):
                result.unavailable[key] = "the EHR reported an error for this prefetch"
                continue
            result.resources.extend(bundle_resources(value) if isinstance(value, dict) else [])
            continue
        relative = fill_template(template, request)
        if relative is None:
            continue
        to_fetch[key] = relative
    for key, value in given.items():  # keys of other templates still carry data
        if key not in templates and isinstance(value, dict) and not _is_outcome(value):
            result.resources.extend(bundle_resources(value))
    if to_fetch:
        if request.fhirServer is None or fetcher is None:
            for key in to_fetch:
                result.unavailable[key] = "not prefetched and no FHIR server to read it from"
        else:
            token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
            fetched = await fetcher.get_many(request.fhirServer, to_fetch, token, budget)
            for key, resources in fetched.items():
                if resources is None:
                    result.unavailable[key] = "the FHIR server could not be read in time"
                else:
                    result.resources.extend(resources)
                    result.fetched.append(key)
    return result
