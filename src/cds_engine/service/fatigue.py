"""Alert-fatigue controls, declared in the pack and never hiding a new danger.

Two controls, both keyed on a hash of the facts the tier read (``Alert.evidence``):

* **Shown once** (patient-view only): a card is shown at most once per (pack, patient, encounter —
  or calendar day when no ``encounterId`` is sent) and tier, and again when its facts change.
* **Repeat suppression** (every hook): a tier the pack marks ``suppressible: true`` is not shown
  while a window started by a prescriber *override in feedback* is open on (patient, tier, facts
  hash, issuer/tenant); the window is the pack parameter ``suppress_window_minutes`` (default 0 =
  off; a site sets it in ``site.yaml``). A suppressed card is still evaluated and stored as "not
  shown — suppressed by …".

Neither control ever applies to critical tiers or to the categories of
:data:`~cds_engine.rules.schema.NEVER_SUPPRESSED_CATEGORIES` (the schema refuses ``suppressible``
on them), nor to cannot-assess alerts. Elapsed-time facts (unit days or hours: "eGFR 95 days old")
are left out of the hash: the clock moving on is not new evidence, a new dose, band or
interacting drug is.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cds_engine.alerts import Alert
from cds_engine.facts.catalog import lookup
from cds_engine.rules.compile import CompiledPack
from cds_engine.rules.schema import never_suppressed
from cds_engine.service.models import Card
from cds_engine.store.fatigue import FatigueStore

__all__ = ["FatiguePolicy", "Screened", "always_shown", "client_key", "facts_hash", "suppressible"]

WINDOW_PARAMETER = "suppress_window_minutes"
_ELAPSED_UNITS = frozenset({"days", "h"})
_ELAPSED_FAMILIES = frozenset({"days_since", "cond_days", "cond_onset_days"})


def _sha(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def client_key(issuer: str | None, tenant: str | None) -> str:
    """Who received the card: feedback counts only from the same issuer and tenant."""
    return _sha("client", issuer or "", tenant or "")


def _elapsed(name: str) -> bool:
    spec, family, _ = lookup(name.split("__", 1)[0])
    if spec is not None:
        return spec.unit in _ELAPSED_UNITS
    return family is not None and family.prefix in _ELAPSED_FAMILIES


def facts_hash(alert: Alert) -> str:
    """Hash of the facts the tier read, without elapsed-time counters."""
    kept = {k: v for k, v in alert.evidence.items() if not _elapsed(k)}
    return _sha(alert.tier_id, kept)


def _tier(pack: CompiledPack, alert: Alert) -> tuple[str, str, bool] | None:
    """(category, severity, suppressible) of the alert's tier; None for alerts of no pack tier."""
    for rule in pack.spec.rules:
        if rule.id == alert.rule_id:
            for tier in rule.tiers:
                if tier.id == alert.tier_id:
                    return rule.category, tier.severity, tier.suppressible
    return None


def always_shown(pack: CompiledPack, alert: Alert) -> bool:
    """Critical, never-suppressed categories, unknown tiers and cannot-assess warnings: every time.

    An info-level cannot-assess note ("monitoring could not be checked") shows once per encounter.
    """
    if alert.kind == "cannot-assess":
        return alert.severity != "info"
    found = _tier(pack, alert)
    if found is None:
        return True
    category, severity, _ = found
    return never_suppressed(category, severity) or never_suppressed(alert.category, alert.severity)


def suppressible(pack: CompiledPack, alert: Alert) -> bool:
    found = _tier(pack, alert)
    return found is not None and found[2] and not always_shown(pack, alert)


def window_minutes(pack: CompiledPack) -> float:
    value = pack.params.get(WINDOW_PARAMETER, 0)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


@dataclass
class Screened:
    """Cards after the fatigue controls: what to send, and what was kept back and why (by card uuid)."""

    shown: list[tuple[Alert, Card]] = field(default_factory=list)
    hidden: dict[str, str] = field(default_factory=dict)  # card uuid -> "not shown — …"


class FatiguePolicy:
    """Applies the controls against the shared store (None: no store, every card shows)."""

    def __init__(self, store: FatigueStore | None) -> None:
        self.store = store

    def needs_store(
        self, pack: CompiledPack, pairs: list[tuple[Alert, Card]], once_scope: str | None = None
    ) -> bool:
        """Whether :meth:`screen` could read or write the store for these cards.

        False (no store, no suppressible tier, no shown-once scope): every card shows and nothing
        is kept — the caller may skip the thread hop to the store (issue 19 CPU budget).
        """
        if self.store is None:
            return False
        return once_scope is not None or any(suppressible(pack, alert) for alert, _ in pairs)

    def screen(
        self,
        pack: CompiledPack,
        patient_ref: str,
        client: str,
        pairs: list[tuple[Alert, Card]],
        now: datetime,
        *,
        once_scope: str | None = None,
    ) -> Screened:
        """Decide per card; ``once_scope`` (patient-view) also shows each card once per scope."""
        out = Screened()
        if self.store is None:
            out.shown = list(pairs)
            return out
        window = window_minutes(pack)
        remember: list[dict[str, Any]] = []
        for alert, card in pairs:
            can_suppress = suppressible(pack, alert)
            if not can_suppress and once_scope is None:
                out.shown.append((alert, card))  # nothing to read or keep: no hashing either
                continue
            digest = facts_hash(alert)
            reasons = [c.code for c in card.overrideReasons or []]
            key = _sha("suppress", patient_ref, alert.tier_id, digest, client)
            why: str | None = None
            if can_suppress:
                by = self.store.suppressing(key, now, window)
                if by is not None:
                    why = f"not shown — suppressed by {by}"
            if (
                why is None
                and once_scope is not None
                and not always_shown(pack, alert)
                and not self.store.first_display(once_scope, alert.tier_id, digest, now)
            ):
                why = "not shown — already shown for this patient and encounter (or day)"
            if can_suppress or why is not None:  # the key an override starts on; why a card was kept back
                remember.append({"card_uuid": card.uuid, "pack_id": pack.id, "tier_id": alert.tier_id,
                                 "suppress_key": key, "client_key": client, "override_reasons": reasons,
                                 "suppressed_by": why})
            if why is None:
                out.shown.append((alert, card))
            else:
                out.hidden[card.uuid] = why
        self.store.remember_cards(remember, now)
        return out

    def on_override(self, card_uuid: str, reason_code: str | None, client: str, now: datetime) -> str:
        """Feedback said overridden: start a window when the card and reason allow it (best effort)."""
        if self.store is None:
            return "no-store"
        try:
            return self.store.start_window(card_uuid, reason_code, client, now)
        except Exception as exc:  # feedback is best effort; the prescriber's answer is still stored
            return f"not-started-{type(exc).__name__}"
