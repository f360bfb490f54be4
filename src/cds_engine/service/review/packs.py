"""What the page needs from the live rule packs: rule titles, sources, override reasons.

The store keeps what each alert said when it fired; the packs add what the *rule* is (title,
cited sources, the coded override reasons). When the pack that raised an alert has since
changed (another hash) or is no longer loaded, the page says so and falls back to the stored
alert.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cds_engine.rules.overrides import reasons_for
from cds_engine.store.models import AlertRow

if TYPE_CHECKING:
    from cds_engine.engine import Engine
    from cds_engine.rules.compile import CompiledPack

__all__ = ["PackLookup", "RuleInfo"]


@dataclass
class RuleInfo:
    rule_title: str
    pack_title: str | None = None
    pack_loaded: bool = False
    same_version: bool = False
    loaded_version: str | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    override_reasons: list[tuple[str, str]] = field(default_factory=list)


class PackLookup:
    def __init__(self, provider: Callable[[], Engine | None] | Engine | None) -> None:
        if provider is None:
            self._provider: Callable[[], Engine | None] = lambda: None
        elif hasattr(provider, "packs"):  # an Engine itself
            self._provider = lambda: provider  # type: ignore[return-value]
        else:
            self._provider = provider  # type: ignore[assignment]

    def _packs(self) -> list[CompiledPack]:
        try:
            engine = self._provider()
        except Exception:  # a reload in progress must not break the page
            return []
        return list(engine.packs) if engine is not None else []

    def pack(self, pack_id: str) -> CompiledPack | None:
        return next((p for p in self._packs() if p.id == pack_id), None)

    def override_reasons(self, pack_id: str) -> dict[str, str]:
        pack = self.pack(pack_id)
        return {r.code: r.display for r in pack.spec.override_reasons} if pack else {}

    def bulk_rules(self) -> set[str]:
        """Rule ids the loaded packs allow to be acknowledged in bulk (``bulk_acknowledge``)."""
        return {rule_id for pack in self._packs() for rule_id in pack.spec.bulk_acknowledge}

    def rule_title(self, rule_id: str) -> str | None:
        for pack in self._packs():
            for rule in pack.rules:
                if rule.spec.id == rule_id:
                    return rule.spec.title
        return None

    def describe(self, alert: AlertRow) -> RuleInfo:
        info = RuleInfo(rule_title=alert.title, sources=list(alert.sources or []))
        pack = self.pack(alert.pack_id)
        if pack is None:
            return info
        info.pack_loaded, info.pack_title = True, pack.spec.pack.title
        info.loaded_version = f"{pack.version} ({pack.content_hash[:12]})"
        info.same_version = pack.content_hash == alert.pack_hash
        info.override_reasons = [(r.code, r.display) for r in reasons_for(pack.spec, alert.rule_id)]
        rule = next((r for r in pack.rules if r.spec.id == alert.rule_id), None)
        if rule is not None:
            info.rule_title = rule.spec.title
            if info.same_version or not info.sources:
                info.sources = [
                    {"id": sid, "title": src.title, "url": src.url, "tag": src.tag}
                    for sid in rule.spec.sources if (src := pack.spec.sources.get(sid)) is not None
                ]
        return info
