"""The pack catalog (``cds-engine rules docs``): one self-contained HTML page per rule directory.

Written for the clinical committee that signs a pack off, not for developers: every rule with
its condition in words (parameters shown with their values and names, and what a missing
value means), its severity tiers and messages, the parameters with their basis and sign-off
status, the sources with links, the link to the seed statement each rule derives from, the
discrepancy register (which seed statements were corrected or rejected, and why), and the
verifier's findings. The approval status is a banner at the top of each pack.

The page has no external assets (CSS inline, no scripts), so it can be mailed or archived
with the minutes. Jinja2 autoescaping is on: pack text is data, never markup; links are
emitted only for http(s) URLs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from cds_engine.authoring.english import Phrase, Words
from cds_engine.authoring.verify import DirReport
from cds_engine.messages import fmt_value
from cds_engine.rules.compile import CompiledPack
from cds_engine.rules.errors import Finding

__all__ = ["render_catalog"]


def _safe_url(url: str | None) -> str | None:
    return url if url and url.lower().startswith(("https://", "http://")) else None


@dataclass
class _TierView:
    id: str
    severity: str
    when: Phrase
    summary: str
    detail: str | None


@dataclass
class _RuleView:
    id: str
    title: str
    category: str
    applies: Phrase | None
    tiers: list[_TierView]
    summary: str
    detail: str
    suggestions: list[str]
    sources: list[tuple[str, str, str | None]]
    seed_statements: list[str]
    seed_note: str
    findings: list[Finding]
    local_addition: Any = None  # rules/schema.LocalAddition when the rule is not in the knowledge source


def _pack_view(pack: CompiledPack, findings: list[Finding], site_notes: Mapping[str, str],
               defaults: Mapping[str, Any]) -> dict[str, Any]:
    spec = pack.spec
    units = {k: p.unit for k, p in spec.parameters.items()}
    words = Words(pack.params, units)
    by_rule: dict[str | None, list[Finding]] = {}
    for f in findings:
        by_rule.setdefault(f.rule_id, []).append(f)
    rules = []
    for rule in spec.rules:
        rules.append(_RuleView(
            id=rule.id, title=rule.title, category=rule.category,
            applies=words.phrase(rule.applies) if rule.applies is not None else None,
            tiers=[_TierView(t.id, t.severity, words.phrase(t.when), t.summary or rule.summary, t.detail)
                   for t in rule.tiers],
            summary=rule.summary, detail=rule.detail.strip(),
            suggestions=[sg.label for sg in rule.suggestions],
            sources=[(sid, spec.sources[sid].title, _safe_url(spec.sources[sid].url))
                     for sid in rule.sources if sid in spec.sources],
            seed_statements=rule.seed.statements, seed_note=rule.seed.note,
            findings=by_rule.get(rule.id, []),
            local_addition=rule.local_addition,
        ))
    register_ids = {e.id for e in spec.seed_register}
    params = []
    for name, p in spec.parameters.items():
        who = f" ({p.approved_by}, {p.approved_on})" if p.approved_by else ""
        current = pack.params.get(name)
        overridden = name in site_notes or current != defaults.get(name, p.value)
        params.append({"name": name, "value": fmt_value(current), "default": fmt_value(p.value),
                       "overridden": overridden, "site_note": site_notes.get(name, ""), "unit": p.unit or "",
                       "basis": p.basis, "note": p.note, "sources": p.sources,
                       "signoff": p.signoff + who,
                       "needs_signoff": p.basis in ("design-choice", "derived") and p.signoff != "approved"})
    info = spec.pack
    return {
        "info": info, "hash": pack.content_hash, "file": str(pack.file),
        "approved": info.approval.status == "approved",
        "definitions": [(name, words.phrase(d)) for name, d in spec.definitions.items()],
        "parameters": params,
        "pending": sum(p["needs_signoff"] for p in params),
        "sources": [(sid, src.title, _safe_url(src.url), src.tag) for sid, src in spec.sources.items()],
        "rules": rules,
        "register": spec.seed_register,
        "register_ids": register_ids,
        "missing_data": spec.missing_data,
        "pack_findings": by_rule.get(None, []),
        "triggers": info.triggers,
    }


def render_catalog(report: DirReport, title: str = "Rule pack catalog") -> str:
    """HTML of every pack of a verified rule directory (packs that failed to compile: their errors)."""
    env = Environment(loader=PackageLoader("cds_engine.authoring", "templates"),
                      autoescape=select_autoescape(["html", "xml"], default=True),
                      trim_blocks=True, lstrip_blocks=True)
    template = env.get_template("catalog.html")
    packs, failed = [], []
    for pr in report.packs:
        if pr.pack is None:
            failed.append({"file": str(pr.file), "findings": pr.findings})
            continue
        pack = pr.pack
        pack_id = pack.id
        defaults = {k: p.value for k, p in pack.spec.parameters.items()}
        packs.append(_pack_view(pack, pr.findings, report.site.notes.get(pack_id, {}), defaults))
    return template.render(
        title=title, packs=packs, failed=failed, site=report.site, site_findings=report.site_findings,
        directory=str(report.directory), generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def write_catalog(report: DirReport, out: Path, title: str = "Rule pack catalog") -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_catalog(report, title), encoding="utf-8")
    return out
