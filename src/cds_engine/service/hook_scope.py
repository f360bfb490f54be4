"""Which alerts a hook answers with: the pack declares per rule (and optionally per tier) ``hooks:``.

Kept in one place so order-select, order-sign and patient-view read the declaration the same way.
A tier's own ``hooks`` replaces its rule's; a cannot-assess report is answered on a hook when one of
the checks it names runs there (or when it names none: a record that could not be read is always said).
"""

from __future__ import annotations

from collections.abc import Callable

from cds_engine.alerts import Alert
from cds_engine.rules.compile import CompiledPack
from cds_engine.rules.pack_memo import PackMemo

__all__ = ["offers_hook", "runs_on"]


def _hooks(pack: CompiledPack) -> dict[str, frozenset[str]]:
    """rule id and tier id → the hooks it runs on."""
    out: dict[str, frozenset[str]] = {}
    for rule in pack.spec.rules:
        out[rule.id] = frozenset(rule.hooks)
        for tier in rule.tiers:
            out[tier.id] = frozenset(tier.hooks if tier.hooks is not None else rule.hooks)
    return out


# per loaded pack object, held weakly (PackMemo): a table that held the packs themselves kept up to
# 33 hot reloads' old packs (trees, vocabulary, spec) alive
_declared: Callable[[CompiledPack], dict[str, frozenset[str]]] = PackMemo(_hooks).get


def runs_on(pack: CompiledPack, alert: Alert, hook: str) -> bool:
    declared = _declared(pack)
    if alert.kind == "cannot-assess":
        named = [declared.get(item, declared.get(item.split(".", 1)[0])) for item in alert.not_assessed]
        known = [h for h in named if h is not None]
        return not known or any(hook in h for h in known)
    hooks = declared.get(alert.tier_id, declared.get(alert.rule_id))
    return hooks is None or hook in hooks


def offers_hook(pack: CompiledPack, hook: str) -> bool:
    """Does any rule or tier of the pack run on ``hook``?"""
    return any(hook in h for h in _declared(pack).values())
