"""Which override reasons a card offers: the rule's own list, or the pack's default reasons.

A pack declares every override reason once (``override_reasons``: code, display, ``default``).
Reasons marked ``default: true`` (the default) are offered on every rule that does not list its
own; a rule whose generic reasons make no sense ("tolerated before" on an intrathecal pump
interruption) lists the codes it offers (``rules[].override_reasons``), in order.
"""

from __future__ import annotations

from cds_engine.rules import schema as s

__all__ = ["reasons_for"]


def reasons_for(pack: s.Pack, rule_id: str | None) -> list[s.OverrideReason]:
    """The override reasons of ``rule_id``'s cards (the default set for grouped cannot-assess cards)."""
    by_code = {r.code: r for r in pack.override_reasons}
    rule = next((r for r in pack.rules if r.id == rule_id), None) if rule_id else None
    if rule is not None and rule.override_reasons:
        return [by_code[c] for c in rule.override_reasons if c in by_code]
    return [r for r in pack.override_reasons if r.default]
