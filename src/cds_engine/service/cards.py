"""Alerts → CDS Hooks cards: one card per alert, most severe first.

Every card carries what a client needs to show, file and feed back on it: a ``uuid``; the
alert's summary (< 140 characters) and markdown detail with the patient's values; ``indicator``
= severity; ``source`` = the pack (label, canonical URL) with ``topic`` = Coding(system = pack
URL, code = rule id, display = rule title) so EHRs can filter by rule; the pack's coded override
reasons; links to the cited sources — only regulator, PubMed or DOI addresses, since a card link
is a trust decision the EHR makes for its users; and dose suggestions where the rule names a
dose (:mod:`cds_engine.service.suggestions`). While the pack awaits local clinical validation,
the detail says so.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cds_engine.alerts import Alert
from cds_engine.rules.compile import CompiledPack
from cds_engine.rules.governance import approval_state
from cds_engine.rules.overrides import reasons_for
from cds_engine.rules.pack_memo import PackMemo
from cds_engine.service.models import Card, CdsCoding, Link, Source, Suggestion
from cds_engine.service.order_label import named_detail

__all__ = ["LINK_HOSTS", "alert_card", "allowed_link", "override_reasons"]

# Regulators, the NIH/NLM (DailyMed, PubMed) and DOI resolvers; subdomains included.
LINK_HOSTS = ("fda.gov", "nih.gov", "doi.org", "ema.europa.eu", "gov.uk", "canada.ca", "ansm.sante.fr")


def allowed_link(url: str | None, hosts: Iterable[str] = LINK_HOSTS) -> bool:
    if not url:
        return False
    return _allowed(url, tuple(hosts))


@functools.lru_cache(maxsize=4096)
def _allowed(url: str, hosts: tuple[str, ...]) -> bool:
    """:func:`allowed_link` of one URL, remembered: the same few pack URLs recur on every card.

    Parsing them was most of a card's cost (issue 19 profile). A pure function of two strings;
    the bound keeps a pack with very many sources from growing it without limit.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme == "https" and any(host == h or host.endswith("." + h) for h in hosts)


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _source(pack: CompiledPack, code: str, display: str) -> Source:
    info = pack.spec.pack
    return Source(
        label=f"{info.title} ({info.id} {info.version})",
        url=info.url,
        topic=CdsCoding(system=info.url, code=code, display=display),
    )


def override_reasons(pack: CompiledPack, rule_id: str | None = None) -> list[CdsCoding]:
    """The coded reasons offered on a card of ``rule_id`` (the rule's own list, else the pack's defaults)."""
    system = f"{pack.spec.pack.url}/override-reason"
    return [CdsCoding(system=system, code=r.code, display=r.display) for r in reasons_for(pack.spec, rule_id)]


def _approval_line(pack: CompiledPack) -> str:
    return approval_state(pack.spec).sentence()


@dataclass
class _PackParts:
    """What every card of one loaded pack repeats, built once per pack instead of once per card.

    The approval sentence counts the pack's signed-off parameters, and the override reasons are
    models validated on construction: per card they were a tenth of a hook call's card time
    (issue 19 profile). The models are shared between cards — nothing changes a card's parts
    after it is built (``name_orders`` copies the card) — and each card gets its own list.
    """

    approval: str
    reasons: dict[str | None, list[CdsCoding]] = field(default_factory=dict)
    # the card source of a rule (rule id, title) and the link of a cited source (title, url): two
    # to four models validated per card before (issue 19 profile); bounded by _PART_LIMIT
    sources: dict[tuple[str, str], Source] = field(default_factory=dict)
    links: dict[tuple[str, str], Link] = field(default_factory=dict)


_PART_LIMIT = 4096  # shared parts kept per pack; past it a card builds its own (never wrong, slower)


# the pack's shared card parts (a reloaded pack is a new object, so it gets its own)
_pack_parts: Callable[[CompiledPack], _PackParts] = PackMemo(
    lambda pack: _PackParts(_approval_line(pack))).get


def _reasons(pack: CompiledPack, rule_id: str) -> list[CdsCoding]:
    """A new list of the (shared) override-reason codings of ``rule_id``'s cards."""
    cached = _pack_parts(pack).reasons
    if rule_id not in cached:
        cached[rule_id] = override_reasons(pack, rule_id)
    return list(cached[rule_id])


def alert_card(
    alert: Alert,
    pack: CompiledPack,
    suggestions: list[Suggestion] | None = None,
    link_hosts: Iterable[str] = LINK_HOSTS,
    labels: list[str] | None = None,
) -> Card:
    """The card of one alert; ``labels`` name the orders it is about (as :func:`name_orders` would)."""
    hosts = tuple(link_hosts)
    parts = _pack_parts(pack)
    links: list[Link] = []
    seen: set[str] = set()
    for source in alert.sources:
        if source.url and source.url not in seen and allowed_link(source.url, hosts):
            seen.add(source.url)
            links.append(_link(parts, source.title, source.url))
    detail = alert.detail.strip()
    approval = parts.approval
    if approval not in detail:
        detail = f"{detail}\n\n_{approval}_"
    return Card(
        uuid=str(uuid.uuid4()),
        summary=_short(alert.summary, 139),
        detail=named_detail(detail or None, labels) if labels else detail or None,
        indicator=alert.severity,
        source=_card_source(parts, pack, alert.rule_id, alert.title),
        suggestions=suggestions or None,
        selectionBehavior="at-most-one" if suggestions else None,
        overrideReasons=_reasons(pack, alert.rule_id) or None,
        links=links or None,
    )


def _link(parts: _PackParts, title: str, url: str) -> Link:
    """The (shared) link model of a cited source."""
    key = (title, url)
    link = parts.links.get(key)
    if link is None:
        link = Link(label=_short(title, 120), url=url, type="absolute")
        if len(parts.links) < _PART_LIMIT:
            parts.links[key] = link
    return link


def _card_source(parts: _PackParts, pack: CompiledPack, rule_id: str, title: str) -> Source:
    """The (shared) card source of a rule: the pack, topic = the rule."""
    key = (rule_id, title)
    source = parts.sources.get(key)
    if source is None:
        source = _source(pack, rule_id, title)
        if len(parts.sources) < _PART_LIMIT:
            parts.sources[key] = source
    return source
