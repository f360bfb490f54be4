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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from cds_engine import metrics
from cds_engine.service.callbacks import (
    CallbackRefused,
    HookCalls,
    PartialRead,
    current_calls,
    encode_id,
    read_json,
    same_origin,
    search_request,
)
from cds_engine.service.medication_refs import mark_unidentified, unidentified
from cds_engine.service.models import HookRequest
from cds_engine.sources.fhir import bundle_resources

__all__ = [
    "MEDICATION_LIST_KEYS", "FhirFetcher", "Prefetched", "fill_template", "gather_prefetch", "local_prefetch",
]

log = logging.getLogger("cds_engine.service")
_PARTIAL = "partial: only some pages of this list could be read"
_TOKEN = re.compile(r"\{\{\s*context\.(\w+)\s*\}\}")
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


# The keys whose lists must all be read completely before a card may say a medicine class is "none".
MEDICATION_LIST_KEYS = ("medicationRequests", "medicationStatements", "medicationAdministrations")


@dataclass(slots=True)
class Prefetched:
    resources: list[dict[str, Any]] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # key -> why (no detail from the EHR)
    fetched: list[str] = field(default_factory=list)
    read: set[str] = field(default_factory=set)  # keys given (a null included) or fetched
    incomplete: dict[str, str] = field(default_factory=dict)  # key -> why only part of it was read

    def medication_lists_complete(self) -> bool:
        """Every medication list was read, none failed, none was cut short (paging, caps)."""
        return all(
            key in self.read and key not in self.unavailable and key not in self.incomplete
            for key in MEDICATION_LIST_KEYS
        )


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
        return encode_id(str(value))  # ids checked against the FHIR grammar before, encoded here

    filled = _TOKEN.sub(sub, template)
    return None if missing or "{{" in filled else filled


def _secure(base: str) -> bool:
    """Patient data and bearer tokens travel over TLS; plain http only to this machine (local trials)."""
    parts = urlsplit(base)
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK)


def next_link(bundle: Any) -> str | None:
    """The ``next`` paging link of a Bundle, if any."""
    links = bundle.get("link") if isinstance(bundle, dict) else None
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None


def _is_outcome(value: Any) -> bool:
    return isinstance(value, dict) and value.get("resourceType") == "OperationOutcome"


def _has_next(value: Any) -> bool:
    """A searchset Bundle with a ``next`` link: only its first page is here."""
    links = value.get("link") if isinstance(value, dict) else None
    return isinstance(links, list) and any(
        isinstance(link, dict) and link.get("relation") == "next" for link in links
    )


# Resources a search may carry beside its matches: ``_include``d products (some EHRs omit the
# search mode) and nested Bundles (walked like the outer one).
_COMPANIONS = frozenset({"Medication", "Bundle"})
_NOT_A_BUNDLE = "the EHR sent something other than a FHIR Bundle for this prefetch"


def template_type(template: str) -> tuple[str, bool]:
    """(the resource type a template asks for, whether it is a search)."""
    path, search, _ = template.partition("?")
    return path.split("/", 1)[0], bool(search)


def _bundle_problem(
    bundle: dict[str, Any], expected: str | None, depth: int = 0, whole: bool = True
) -> str | None:
    """Why a Bundle cannot be read completely as a list of ``expected`` (None: any type); None if it can.

    ``whole``: the Bundle is the first page of its search, so a ``total`` above its matches with
    no ``next`` link means the EHR cut the list short (a later page's total counts every page).

    An entry without a readable resource, or of a kind the query cannot return, means the list as
    read may miss a medicine (or condition, ...): unknown must never read as "none" (fail-safe).
    """
    entries = bundle.get("entry")
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        return "the EHR sent a Bundle whose entries cannot be read"
    matches = 0
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            return "the EHR sent a Bundle with entries that cannot be read"
        kind = resource["resourceType"]
        search = entry.get("search") if isinstance(entry.get("search"), dict) else {}
        mode = search.get("mode")
        if kind == "OperationOutcome" and mode == "outcome":
            continue
        if kind == "Bundle":
            if depth >= 4:
                return "the EHR sent Bundles nested too deeply to be read"
            inner = _bundle_problem(resource, expected, depth + 1)
            if inner is not None:
                return inner
            continue
        if mode == "include" or kind in _COMPANIONS:
            continue
        if expected is not None and kind != expected:
            return f"the EHR sent a Bundle with entries other than {expected}"
        matches += 1
    total = bundle.get("total")
    if (
        isinstance(total, int) and not isinstance(total, bool) and total > matches
        and not _has_next(bundle) and depth == 0 and whole
    ):
        return "the EHR sent fewer entries than its Bundle's total"
    return None


def readable(value: Any, template: str) -> tuple[list[dict[str, Any]], str | None]:
    """(the resources that can be read from a prefetch value, why it is not fully readable or None).

    Readable: a Bundle whose entries all carry a resource the template's query can return, or —
    for a read template (``Patient/{{id}}``) — that one resource. A lone resource for a search
    is used but marks the key unavailable (the spec says a search answers with a Bundle, so the
    rest of the list may be missing); anything else (a string, a list, a number, another
    resource type) reads as nothing and marks the key unavailable. ``None`` and
    ``OperationOutcome`` are the caller's (no data; the EHR's error).
    """
    expected, search = template_type(template)
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        return [], _NOT_A_BUNDLE
    kind = value["resourceType"]
    if kind == "Bundle":
        try:
            return bundle_resources(value), _bundle_problem(value, expected)
        except RecursionError:
            return [], "the EHR sent Bundles nested too deeply to be read"
    if kind != expected:
        return [], f"the EHR sent a {'Bundle of ' if search else ''}resource of another type than {expected}"
    if search:
        return [value], "the EHR sent a single resource, not the search's Bundle: the list may be incomplete"
    return [value], None


class FhirFetcher:
    """Reads from the EHR's FHIR server with a shared connection pool and a per-hook time budget."""

    def __init__(self, client: httpx.AsyncClient, budget_seconds: float) -> None:
        self.client = client
        self.budget = budget_seconds

    async def get(
        self, base: str, relative: str, token: str | None, calls: HookCalls | None = None
    ) -> list[dict[str, Any]]:
        """Every page of a read or search (``relative`` may be an absolute paging link of ``base``'s origin).

        Call-backs are bounded by this hook's :class:`HookCalls` (:mod:`cds_engine.service.callbacks`):
        count, bytes, pages, same origin for paging links (the token goes nowhere else), and a long
        search goes as ``POST _search``. Raises :class:`PartialRead` when only some pages were read.
        """
        if not _secure(base):
            raise ValueError("fhirServer is not https (plain http is accepted on loopback only)")
        calls = calls or current_calls()
        headers = {"Accept": "application/fhir+json, application/json", "Accept-Encoding": "gzip, deflate"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        pages = 0
        if relative.startswith(("https://", "http://")):  # the next page of a prefetched Bundle
            if not same_origin(relative, base):
                raise CallbackRefused("paging link to another origin")
            method, url, form = "GET", relative, None
            pages = 1
        else:
            method, url, form = search_request(base, relative, calls.limits.max_url_chars)
        out: list[dict[str, Any]] = []
        while True:
            if pages >= calls.limits.max_pages:
                raise PartialRead(out, f"more than {calls.limits.max_pages} pages")
            status, body = await read_json(self.client, method, url, headers, form, calls)
            if status == 414 and method == "GET" and pages == 0 and "?" in relative:
                method, url, form = search_request(base, relative, 0)  # too long for this server
                continue
            if status == 404 and "?" not in relative and pages == 0:
                return out  # a read that found nothing: no data
            if status >= 400 or not isinstance(body, dict):
                raise ValueError(f"HTTP {status}")
            if _is_outcome(body):
                raise ValueError("OperationOutcome")
            if "?" in relative or pages > 0:  # a search answers with a Bundle, read whole
                problem = (
                    "not a Bundle" if body.get("resourceType") != "Bundle"
                    else _bundle_problem(body, None, whole=pages == 0)
                )
                if problem is not None:
                    raise ValueError(problem)
            out.extend(bundle_resources(body))
            pages += 1
            link = next_link(body)
            if link is None:
                return out
            if not same_origin(link, base):
                raise PartialRead(out, "a paging link to another server was not followed")
            method, url, form = "GET", link, None

    async def get_many(
        self, base: str, relatives: dict[str, str], token: str | None, budget: float | None = None
    ) -> dict[str, list[dict[str, Any]] | None]:
        """key -> resources, or None where the call failed or ran out of time.

        ``budget``: what is left of the hook's time budget (default: all of it).
        """
        budget = self.budget if budget is None else max(0.0, budget)

        calls = current_calls()  # one counter for every task of this hook call

        async def one(key: str, relative: str) -> tuple[str, list[dict[str, Any]] | None]:
            started = time.perf_counter()
            try:
                return key, await self.get(base, relative, token, calls)
            except PartialRead as exc:
                calls.partial[key] = exc.why
                metrics.CALLBACK_FAILURES.labels("partial").inc()
                log.warning("FHIR call-back partial: key=%s", key)
                return key, exc.resources
            except Exception as exc:  # any failure of one key (an httpx.InvalidURL
                # paging link, a body nested past the recursion limit, ...): that key is unavailable
                # and the hook still answers with its card, never a 500
                metrics.CALLBACK_FAILURES.labels(metrics.label(type(exc).__name__)).inc()
                log.warning("FHIR call-back failed: key=%s error=%s", key, type(exc).__name__)
                return key, None
            finally:
                metrics.CALLBACK_SECONDS.labels(metrics.label(key)).observe(time.perf_counter() - started)

        tasks = [asyncio.ensure_future(one(k, r)) for k, r in relatives.items()]
        done, pending = await asyncio.wait(tasks, timeout=budget) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        if pending:
            metrics.CALLBACK_FAILURES.labels("timeout").inc(len(pending))
        results: dict[str, list[dict[str, Any]] | None] = dict.fromkeys(relatives)
        for task in done:
            key, value = task.result()
            results[key] = value
        if pending:
            log.warning("FHIR call-back budget of %.1fs exceeded for %d key(s)", budget, len(pending))
        return results


def _follows(link: str, server: str) -> bool:
    """A paging link this service may follow: same origin, and one httpx can send (a link with a
    control character or over the URL size limit is refused here, not by a 500 later)."""
    try:
        return same_origin(link, server) and bool(httpx.URL(link).host)
    except Exception:  # httpx.InvalidURL and whatever a hostile link provokes
        return False


_Cap = Callable[[str, list[dict[str, Any]]], tuple[list[dict[str, Any]], str | None]]
_NO_SERVER = "not prefetched and no FHIR server to read it from"


def _take(result: Prefetched, cap: _Cap | None, key: str, resources: list[dict[str, Any]]) -> None:
    if cap is not None:
        resources, why = cap(key, resources)
        if why:
            result.unavailable[key] = why
    result.resources.extend(resources)


def _given(
    request: HookRequest, templates: dict[str, str], fetcher: FhirFetcher | None, cap: _Cap | None
) -> tuple[Prefetched, dict[str, str], dict[str, str], dict[str, list[dict[str, Any]]]]:
    """What the request itself carries: (result so far, keys to fetch, paged keys, their first pages)."""
    result = Prefetched()
    given = request.prefetch or {}
    to_fetch: dict[str, str] = {}
    paged: dict[str, str] = {}  # key -> next page link of a prefetched Bundle
    first_pages: dict[str, list[dict[str, Any]]] = {}
    for key, template in templates.items():
        if key in given:
            value = given[key]
            result.read.add(key)
            if value is None:
                continue
            if _has_next(value):
                result.incomplete[key] = "the EHR sent one page of a longer list"
            if _is_outcome(value):
                result.unavailable[key] = "the EHR reported an error for this prefetch"
                continue
            resources, problem = readable(value, template)
            if problem is not None:  # what can be read is used; the card says the key is not whole
                _take(result, cap, key, resources)
                result.unavailable[key] = problem
                continue
            link = next_link(value)
            if link is not None:  # a paged prefetch: the next pages are read through fhirServer
                server = request.fhirServer
                if server is not None and fetcher is not None and _follows(link, server):
                    paged[key] = link
                    first_pages[key] = resources
                    continue
                result.unavailable[key] = _PARTIAL
            _take(result, cap, key, resources)
            continue
        relative = fill_template(template, request)
        if relative is None:
            continue
        to_fetch[key] = relative
    for key, value in given.items():  # keys of other templates still carry data
        if key not in templates and isinstance(value, dict) and not _is_outcome(value):
            _take(result, cap, key, bundle_resources(value))
    return result, to_fetch, paged, first_pages


def local_prefetch(request: HookRequest, templates: dict[str, str], cap: _Cap | None = None) -> Prefetched:
    """:func:`gather_prefetch` when nothing can be read over FHIR (no ``fhirServer`` or no fetcher).

    The same result, computed without the event loop: the hook runs it in its worker thread,
    together with the evaluation, in one hop instead of two (issue 19 CPU budget).
    """
    result, to_fetch, _, _ = _given(request, templates, None, cap)
    for key in to_fetch:
        result.unavailable[key] = _NO_SERVER
    # no server to read a co-medication's Medication from: one not contained, prefetched or in the
    # draft bundle leaves its list incomplete (the card says so; the drafts' own are the hook's 412)
    drafts = request.context.draftOrders
    local = [*result.resources, *(bundle_resources(drafts) if isinstance(drafts, dict) else [])]
    mark_unidentified(result, unidentified(result.resources, local))
    return result


async def gather_prefetch(
    request: HookRequest,
    templates: dict[str, str],
    fetcher: FhirFetcher | None,
    budget: float | None = None,
    cap: _Cap | None = None,
) -> Prefetched:
    """All resources of the request's prefetch, plus what had to be fetched; unavailable keys listed.

    ``cap(key, resources)`` bounds each key (:mod:`cds_engine.service.limits`): the resources
    kept, and why the key is incomplete when that must be said on the data-unavailable card.
    """
    result, to_fetch, paged, first_pages = _given(request, templates, fetcher, cap)
    if to_fetch or paged:
        if request.fhirServer is None or fetcher is None:
            for key in to_fetch:
                result.unavailable[key] = _NO_SERVER
        else:
            token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
            calls = current_calls()
            fetched = await fetcher.get_many(request.fhirServer, {**to_fetch, **paged}, token, budget)
            for key, resources in fetched.items():
                if key in paged:
                    _take(result, cap, key, [*first_pages[key], *(resources or [])])
                    if resources is None or key in calls.partial:
                        result.unavailable[key] = _PARTIAL
                    else:
                        result.incomplete.pop(key, None)  # every page was read
                elif resources is None:
                    result.unavailable[key] = "the FHIR server could not be read (timeout or error)"
                else:
                    _take(result, cap, key, resources)
                    result.fetched.append(key)
                    result.read.add(key)
                    if key in calls.partial:
                        result.unavailable[key] = _PARTIAL
                        result.incomplete[key] = calls.partial[key]
    return result
