"""Pack status and approval: what may run, what may be shown, and what an approval must say.

A pack is ``draft``, ``active`` or ``retired``. Only ``active`` packs interrupt anyone: the
service shows their alerts as cards. ``draft`` packs run in *silent mode* — evaluated and
stored, never shown — so a committee can watch what a new pack would do before it goes live.
``retired`` packs do not run. Every alert carries the status of the pack it came from
(``Alert.pack_status``), so the decision "show or only store" needs no engine lookup.
"""

from __future__ import annotations

from datetime import date

from cds_engine.alerts import Alert
from cds_engine.rules import schema as s
from cds_engine.rules.errors import Finding
from cds_engine.rules.yaml_lines import LineMap

__all__ = ["RUNNING_STATUSES", "SHOWN_STATUSES", "approval_findings", "is_shown"]

SHOWN_STATUSES = frozenset({"active"})
RUNNING_STATUSES = ("active", "draft")  # what a deployment evaluates: active shown, draft silent


def is_shown(alert: Alert) -> bool:
    """May this alert be shown to a clinician (card, review page)? Draft-pack alerts are stored only."""
    return alert.pack_status in SHOWN_STATUSES


def approval_findings(pack: s.Pack, lines: LineMap, file: str,
                      directory_name: str | None = None) -> list[Finding]:
    """Governance checks: an approval names who and when; an approved pack has no pending sign-offs."""
    out: list[Finding] = []
    info = pack.pack
    approval = info.approval
    where = lines.line_of(("pack", "approval"))
    if approval.status == "approved":
        given = (("approver", approval.approver), ("date", approval.date))
        missing = [name for name, value in given if not value]
        if missing:
            out.append(Finding(file, where, None,
                               f"pack {info.id} is marked approved but the approval has no "
                               f"{' and no '.join(missing)}: record who approved it and when "
                               "(pack.approval.approver, pack.approval.date)"))
        for name, param in pack.parameters.items():
            if param.signoff == "pending":
                out.append(Finding(file, lines.line_of(("parameters", name)), None,
                                   f"pack {info.id} is approved but parameter {name!r} ({param.basis}) is "
                                   "still pending sign-off: sign it off (signoff: approved, with a note) or "
                                   "withdraw the approval", "warning"))
    if approval.date:
        try:
            date.fromisoformat(str(approval.date))
        except ValueError:
            out.append(Finding(file, lines.line_of(("pack", "approval", "date")), None,
                               f"approval date {approval.date!r} is not an ISO date: write it as YYYY-MM-DD"))
    if directory_name is not None and directory_name != info.id:
        out.append(Finding(file, lines.line_of(("pack", "id")), None,
                           f"pack id {info.id!r} differs from its folder {directory_name!r}: site settings "
                           "and fixtures are found by folder name — rename one so they match"))
    return out
