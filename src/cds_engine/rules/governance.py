"""Pack status and approval: what may run, what may be shown, and what an approval must say.

A pack is ``draft``, ``active`` or ``retired``. Only ``active`` packs interrupt anyone: the
service shows their alerts as cards. ``draft`` packs run in *silent mode* — evaluated and
stored, never shown — so a committee can watch what a new pack would do before it goes live.
``retired`` packs do not run. Every alert carries the status of the pack it came from
(``Alert.pack_status``), so the decision "show or only store" needs no engine lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Protocol

from cds_engine.rules import schema as s
from cds_engine.rules.errors import Finding
from cds_engine.rules.yaml_lines import LineMap

__all__ = [
    "RUNNING_STATUSES",
    "SHOWN_STATUSES",
    "ApprovalState",
    "approval_findings",
    "approval_state",
    "is_shown",
]

SHOWN_STATUSES = frozenset({"active"})
RUNNING_STATUSES = ("active", "draft")  # what a deployment evaluates: active shown, draft silent


class _FromPack(Protocol):
    """Anything stamped with its pack's status, e.g. :class:`cds_engine.alerts.Alert` (the rule
    language sits below the alert model, so it names the one attribute it reads, not the class)."""

    @property
    def pack_status(self) -> str: ...


def is_shown(alert: _FromPack) -> bool:
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
    out.extend(_parameter_signoffs(pack, lines, file))
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


def _parameter_signoffs(pack: s.Pack, lines: LineMap, file: str) -> list[Finding]:
    """``signoff: approved`` means a named person signed the value off on a date; anything less is pending."""
    out: list[Finding] = []
    for name, param in pack.parameters.items():
        where = lines.line_of(("parameters", name))
        if param.signoff == "approved":
            missing = [key for key in ("approved_by", "approved_on") if not getattr(param, key)]
            if missing:
                out.append(Finding(file, where, None,
                                   f"parameter {name!r} is marked signoff: approved without "
                                   f"{' and '.join(missing)}: record who signed it off and when, or set "
                                   "signoff: pending"))
        if param.approved_on:
            try:
                date.fromisoformat(str(param.approved_on))
            except ValueError:
                out.append(Finding(file, where, None,
                                   f"parameter {name!r}: approved_on {param.approved_on!r} is not an "
                                   "ISO date (YYYY-MM-DD)"))
    return out


@dataclass(frozen=True, slots=True)
class ApprovalState:
    """What a clinician or operator is told about a pack's sign-off (card footer, ``/healthz``)."""

    pack_id: str
    version: str
    status: str  # pack.approval.status
    approver: str | None
    date: str | None
    parameters: int
    parameters_signed_off: int

    @property
    def pending(self) -> int:
        return self.parameters - self.parameters_signed_off

    def sentence(self) -> str:
        signed = f"{self.parameters_signed_off} of {self.parameters} parameters signed off"
        if self.status == "approved":
            who = ", ".join(x for x in (self.approver, self.date) if x)
            return f"Knowledge pack {self.pack_id} {self.version}: approved ({who}); {signed}."
        return (f"Knowledge pack {self.pack_id} {self.version}: approval pending local clinical "
                f"validation — {signed}.")

    def as_dict(self) -> dict[str, object]:
        return {"status": self.status, "approver": self.approver, "date": self.date,
                "parameters": self.parameters, "parameters_signed_off": self.parameters_signed_off,
                "parameters_pending": self.pending}


def approval_state(pack: s.Pack) -> ApprovalState:
    """The pack's approval and how many parameters carry a named, dated sign-off."""
    info = pack.pack
    signed = sum(1 for p in pack.parameters.values()
                 if p.signoff == "approved" and p.approved_by and p.approved_on)
    return ApprovalState(info.id, info.version, info.approval.status, info.approval.approver,
                         info.approval.date, len(pack.parameters), signed)
