"""The rule verifier behind ``cds-engine rules lint``: finds what a schema check cannot.

The pack compiler already refuses malformed packs, unknown facts, type mismatches and
undefined parameters. A pack can pass all of that and still be wrong in ways that only show
on some patient, months later. This module reasons over the compiled condition trees
(:mod:`cds_engine.rules.dnf`, :mod:`cds_engine.rules.intervals`) to report, with file:line,
rule id and a sentence saying what to change:

* **contradictions** — a rule or tier no patient can ever meet (``egfr < 30`` and ``egfr ≥ 50``,
  ``eq``/``ne`` conflicts, a tier excluded by its rule's ``applies``);
* **gaps and overlaps** between numeric bands that a group of definitions (``band_S``,
  ``band_M`` … share a name prefix) or a rule's tiers lay over one fact;
* **dead, duplicate and subsumed** tiers and rules — a tier that is never raised because a
  higher tier always matches with it, two rules that always fire together;
* **parameters** defined but never used; **messages** that show facts the rule does not read;
  clinician text with authoring notes, raw codes, unrendered placeholders or literal thresholds
  (see :mod:`text_lint`);
  **summaries** that can outgrow a card (140 characters) once real values are filled in;
* **governance** — approvals without approver and date (see :mod:`governance`), and
  **site settings** that name unknown parameters (see :mod:`site`).

Errors make lint exit non-zero and make a running service refuse the pack (hot reload keeps
the last good one); warnings are printed and do not block.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cds_engine.authoring.english import compiled_leaf_text
from cds_engine.authoring.text_lint import text_findings
from cds_engine.facts import catalog
from cds_engine.messages import fmt_value
from cds_engine.rules import schema as s
from cds_engine.rules.compile import CompiledPack, CompiledRule, _Compiler, compile_pack, placeholders
from cds_engine.rules.conditions import And, AtLeastNode, Leaf, Node, NotNode, Or, facts_of
from cds_engine.rules.dnf import Expander, TooComplex, fact_kind
from cds_engine.rules.errors import Finding, PackLoadError
from cds_engine.rules.governance import approval_findings
from cds_engine.rules.intervals import (
    FULL,
    Interval,
    fmt_interval,
    holes,
    integers,
    intersect_sets,
    projections,
    union,
)
from cds_engine.rules.one_click import PARAMETERS as ONE_CLICK_PARAMETERS
from cds_engine.rules.safe_paths import require_inside
from cds_engine.rules.site import SiteSettings, declared_parameters, resolve_site
from cds_engine.rules.yaml_lines import LineMap, YamlError, load_with_lines
from cds_engine.vocabulary import Vocabulary

__all__ = [
    "ENGINE_PARAMETERS",
    "SUMMARY_LIMIT",
    "DirReport",
    "PackReport",
    "verify_dir",
    "verify_pack",
    "verify_text",
]

# Parameters the engine itself reads by name (compile.py builds the DrugContext from them: the
# dialysis look-back, the eGFR windows of facts/renal.py, the combined-dose switch; the one-click
# check reads abrupt_reduction_pct). suppress_window_minutes: read by the service's alert-fatigue
# controls (service/fatigue.py), not by a rule. A parameter listed here is never "unused" (the
# re-audit of 2026-12-08 found egfr_pair_window_minutes reported unused while compile.py reads it).
ENGINE_PARAMETERS = (
    frozenset(
        {
            "dialysis_procedure_lookback_days",
            "egfr_max_age_days",
            "egfr_pair_window_minutes",
            "sum_active_oral_orders",
            "abrupt_reduction_pct",
            "suppress_window_minutes",
        }
    )
    | ONE_CLICK_PARAMETERS
)
# Findings kept per pack file: a pack with 200,000 unknown keys logged 23 MB through lint and
# reload (re-audit #6). Errors are kept first, and the line that says how many were left out is an
# error when any error was, so a capped report never reads cleaner than the full one.
MAX_FINDINGS_PER_PACK = 200
SUMMARY_LIMIT = 139  # Alert.summary max_length; longer summaries are cut with an ellipsis
_STRING_WIDTH = 20  # assumed width of a text fact in a summary when the pack lists no longer value
_NUMBER_WIDTH = 8
_SPECIAL_PLACEHOLDERS = frozenset({"rule_id", "tier_id", "severity"})
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)(?::[^}]*)?\}")
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w.]|\.\d)")

Path_ = tuple[str | int, ...]


@dataclass
class PackReport:
    """Verification of one pack file: the compiled pack (None if it did not compile) and findings."""

    file: Path
    pack: CompiledPack | None
    findings: list[Finding] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # checks given up as too complex

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def ok(self) -> bool:
        return self.pack is not None and not self.errors


@dataclass
class DirReport:
    """Verification of a rule directory: every pack plus the site settings."""

    directory: Path
    packs: list[PackReport]
    site: SiteSettings
    site_findings: list[Finding] = field(default_factory=list)
    vocabulary: Vocabulary | None = None

    @property
    def findings(self) -> list[Finding]:
        return [*self.site_findings, *(f for p in self.packs for f in p.findings)]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors and all(p.pack is not None for p in self.packs)

    def compiled(self) -> list[CompiledPack]:
        return [p.pack for p in self.packs if p.pack is not None]


def verify_text(text: str, file: str, vocab: Vocabulary, overrides: dict[str, Any] | None = None,
                content: bytes | None = None, directory_name: str | None = None) -> PackReport:
    """Compile and verify pack text. Never raises for a bad pack: the findings say what is wrong."""
    try:
        pack = compile_pack(text, file, vocab, overrides, content)
    except PackLoadError as exc:
        return PackReport(Path(file), None, _capped(list(exc.findings), file))
    try:
        raw, lines = load_with_lines(text)
    except YamlError:  # pragma: no cover - compile_pack parsed it already
        raw, lines = None, LineMap()
    verifier = _Verifier(pack, vocab, file, lines, raw)
    findings = [*pack.findings, *verifier.run(), *approval_findings(pack.spec, lines, file, directory_name),
                *text_findings(pack, vocab, lines, file)]
    findings.sort(key=lambda f: (f.line or 0, f.rule_id or "", f.message))
    return PackReport(Path(file), pack, _capped(_dedupe(findings), file), verifier.skipped)


def verify_pack(path: str | Path, vocab: Vocabulary, overrides: dict[str, Any] | None = None) -> PackReport:
    path = Path(path)
    try:  # a pack file linked out of its rules directory is refused unread, as load_pack does
        content = require_inside(path, path.parent.parent).read_bytes()
    except PackLoadError as exc:
        return PackReport(path, None, list(exc.findings))
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        return PackReport(path, None, [Finding(str(path), None, None, f"not UTF-8 text: {exc}")])
    return verify_text(text, str(path), vocab, overrides, content, path.parent.name)


def verify_dir(directory: str | Path, site: str | Path | bool | None = True) -> DirReport:
    """Verify ``directory/*/pack.yaml`` against ``directory/vocabulary`` and the site settings."""
    directory = Path(directory)
    site_findings: list[Finding] = []
    try:
        settings = resolve_site(directory, site)
    except PackLoadError as exc:
        settings, site_findings = SiteSettings(), list(exc.findings)
    vocab = Vocabulary.from_dir(directory / "vocabulary")
    reports = []
    paths = sorted(directory.glob("*/pack.yaml"))
    if not paths:
        site_findings.append(Finding(str(directory), None, None,
                                     "no rule packs found: expected DIR/<pack>/pack.yaml files"))
    for path in paths:
        try:  # linked (file or folder) out of the directory: refused unread, as Engine.from_dir does
            declared = declared_parameters(
                require_inside(path, directory).read_text(encoding="utf-8", errors="replace"))
        except PackLoadError as exc:
            reports.append(PackReport(path, None, list(exc.findings)))
            continue
        pack_id = path.parent.name
        site_findings.extend(settings.check(pack_id, declared))
        reports.append(verify_pack(path, vocab, settings.for_pack(pack_id, declared)))
    site_findings.extend(settings.unknown_packs(p.parent.name for p in paths) if settings.file else [])
    return DirReport(directory, reports, settings, site_findings, vocab)


def _dedupe(findings: list[Finding]) -> list[Finding]:
    return list(dict.fromkeys(findings))


def _capped(findings: list[Finding], file: str) -> list[Finding]:
    """At most :data:`MAX_FINDINGS_PER_PACK` findings, errors first, then one saying how many more."""
    if len(findings) <= MAX_FINDINGS_PER_PACK:
        return findings
    errors = [f for f in findings if f.severity == "error"]
    ordered = errors + [f for f in findings if f.severity != "error"]
    kept = ordered[: MAX_FINDINGS_PER_PACK - 1]
    dropped = ordered[MAX_FINDINGS_PER_PACK - 1 :]
    severity = "error" if any(f.severity == "error" for f in dropped) else "warning"
    note = Finding(file, None, None, f"{len(dropped)} more findings not shown (fix the ones above first)",
                   severity)
    return [*kept, note]


# ───────────────────────── the checks ─────────────────────────


def _conjuncts(node: Node) -> list[Node]:
    """Top-level AND-ed parts of a node (definitions are inlined, so bands split into their tests)."""
    if isinstance(node, And):
        return [part for child in node.children for part in _conjuncts(child)]
    return [node]


def _describe(node: Node) -> str:
    if isinstance(node, Leaf):
        return compiled_leaf_text(node)
    if isinstance(node, NotNode):
        return f"not ({_describe(node.child)})"
    if isinstance(node, Or):
        return "any of (" + "; ".join(_describe(c) for c in node.children[:4]) + (
            "; …" if len(node.children) > 4 else "") + ")"
    if isinstance(node, AtLeastNode):
        return f"at least {node.n} of {len(node.children)} conditions"
    if isinstance(node, And):
        return " and ".join(_describe(c) for c in node.children[:4])
    return "a parameter setting"


def _tier_parts(rule: CompiledRule) -> tuple[Node | None, list[Node]]:
    """The rule's compiled ``applies`` and each tier's own ``when`` (compile ANDs them)."""
    if rule.spec.applies is None:
        return None, [t.node for t in rule.tiers]
    applies = rule.tiers[0].node.children[0]  # type: ignore[union-attr]
    return applies, [t.node.children[1] for t in rule.tiers]  # type: ignore[union-attr]


class _Verifier:
    def __init__(self, pack: CompiledPack, vocab: Vocabulary, file: str, lines: LineMap, raw: Any) -> None:
        self.pack = pack
        self.spec = pack.spec
        self.vocab = vocab
        self.file = file
        self.lines = lines
        self.raw = raw
        self.x = Expander()
        self.findings: list[Finding] = []
        self.skipped: list[str] = []
        self.rule_index = {r.spec.id: i for i, r in enumerate(pack.rules)}

    # helpers
    def add(self, path: Path_, rule_id: str | None, message: str, severity: str = "error") -> None:
        self.findings.append(Finding(self.file, self.lines.line_of(path), rule_id, message, severity))  # type: ignore[arg-type]

    def possible(self, *nodes: Node) -> bool:
        """Can one patient make every node TRUE? (Too complex to tell: assume yes.)"""
        try:
            return self.x.satisfiable(*((n, "is_true") for n in nodes))
        except TooComplex:
            self.skipped.append("satisfiability of " + ", ".join(_describe(n)[:60] for n in nodes))
            return True

    def implies(self, a: Node, b: Node) -> bool | None:
        try:
            return self.x.implies(a, b)
        except TooComplex:
            self.skipped.append(f"implication {_describe(a)[:60]} => {_describe(b)[:60]}")
            return None

    def why(self, parts: list[Node]) -> str:
        """The smallest set of AND-ed parts (one or two) that cannot hold together, in words."""
        for p in parts:
            if not self.possible(p):
                return f"{_describe(p)} can never hold"
        if len(parts) <= 40:
            for a, b in combinations(parts, 2):
                if not self.possible(a, b):
                    return f"'{_describe(a)}' and '{_describe(b)}' cannot both hold"
        return "its comparisons exclude each other"

    def run(self) -> list[Finding]:
        checks: list[Callable[[], None]] = [
            self.contradictions, self.dead_tiers, self.duplicate_rules, self.definition_bands,
            self.tier_bands, self.unused_parameters, self.message_facts, self.summary_lengths,
        ]
        for check in checks:
            check()
        return self.findings

    def definitions(self) -> dict[str, Node]:
        """The pack's named conditions, compiled (the compiler inlines them into rules and keeps none)."""
        if not hasattr(self, "_definitions"):
            compiler = _Compiler(self.spec, dict(self.pack.params), self.vocab, self.file, self.lines,
                                 self.raw)
            self._definitions = {n: compiler.definition(n, ("definitions", n), None)
                                 for n in self.spec.definitions}
        return self._definitions

    # contradictions
    def contradictions(self) -> None:
        for name, node in self.definitions().items():
            if not self.possible(node):
                self.add(("definitions", name), None,
                         f"definition {name} can never hold ({self.why(_conjuncts(node))}), so no rule "
                         "using it can fire through it — correct the comparisons")
        for ri, rule in enumerate(self.pack.rules):
            rid = rule.spec.id
            applies, whens = _tier_parts(rule)
            if applies is not None and not self.possible(applies):
                self.add(("rules", ri, "applies"), rid,
                         f"rule {rid} can never fire: its applies condition is contradictory "
                         f"({self.why(_conjuncts(applies))}) — correct the comparisons")
                continue
            for ti, (tier, when) in enumerate(zip(rule.tiers, whens, strict=True)):
                path = ("rules", ri, "tiers", ti, "when")
                if not self.possible(when):
                    self.add(path, rid, f"tier {tier.id} can never fire: its condition is contradictory "
                                        f"({self.why(_conjuncts(when))}) — correct the comparisons")
                elif applies is not None and not self.possible(tier.node):
                    why = self.why(_conjuncts(applies) + _conjuncts(when))
                    self.add(path, rid, f"tier {tier.id} can never fire: its condition contradicts the "
                                        f"rule's applies ({why}) — change the tier or move it to a rule "
                                        "whose applies allows it")

    # subsumption within a rule
    def dead_tiers(self) -> None:
        for ri, rule in enumerate(self.pack.rules):
            live = [t for t in rule.ranked_tiers if self.possible(t.node)]
            order = {t.id: i for i, t in enumerate(rule.tiers)}
            for k, tier in enumerate(live):
                for higher in live[:k]:
                    if not self.implies(tier.node, higher.node):
                        continue
                    path = ("rules", ri, "tiers", order[tier.id])
                    if self.implies(higher.node, tier.node):
                        what = (f"tier {tier.id} duplicates {higher.id}: their conditions match the same "
                                f"patients and {higher.id} is raised — delete {tier.id} or make the "
                                "conditions differ")
                    else:
                        what = (f"tier {tier.id} ({tier.severity}) is never raised: whenever it matches, "
                                f"{higher.id} ({higher.severity}) matches too and the rule raises that — "
                                f"delete {tier.id}, or narrow {higher.id}")
                    self.add(path, rule.spec.id, what)
                    break

    # duplicate and subsumed rules
    def duplicate_rules(self) -> None:
        fires: dict[str, Node] = {r.spec.id: Or(tuple(t.node for t in r.tiers)) for r in self.pack.rules}
        live = [r for r in self.pack.rules if self.possible(fires[r.spec.id])]
        leaf_facts = {r.spec.id: {leaf.fact for t in r.tiers for leaf in facts_of(t.node)} for r in live}
        for a, b in combinations(live, 2):
            ida, idb = a.spec.id, b.spec.id
            same_category = a.spec.category == b.spec.category
            if not same_category and leaf_facts[ida] != leaf_facts[idb]:
                continue
            a_in_b = self.implies(fires[ida], fires[idb])
            b_in_a = self.implies(fires[idb], fires[ida])
            if a_in_b and b_in_a:
                self.add(("rules", self.rule_index[idb]), idb,
                         f"rule {idb} duplicates {ida}: both fire for exactly the same patients — merge them "
                         "(one rule, with tiers if the messages differ)", "warning")
            elif same_category and (a_in_b or b_in_a):
                inner, outer = (a, b) if a_in_b else (b, a)
                iid, oid = inner.spec.id, outer.spec.id
                self.add(("rules", self.rule_index[iid]), iid,
                         f"rule {iid} is subsumed by {oid} ({outer.spec.category}): whenever it fires, "
                         f"{oid} fires too, so clinicians get two alerts — make it a tier of {oid} or "
                         f"narrow {oid}", "warning")

    # numeric bands
    def _band_ranges(self, node: Node) -> dict[str, list[Interval]]:
        """For each number fact the node's TRUE cases bound: the values it allows (exact representation)."""
        try:
            dnf = self.x.dnf(node, "is_true")
        except TooComplex:
            self.skipped.append(f"bands of {_describe(node)[:60]}")
            return {}
        out: dict[str, list[Interval]] = {}
        ordering = ("lt", "lte", "gt", "gte")
        facts = {c.fact for conj in dnf for c in conj if c.kind == "cmp" and c.op in ordering}
        numeric = [f for f in facts if fact_kind(f) in ("number", "integer") and "__" not in f]
        for fact, rng in projections(dnf, numeric).items():  # each over the conjunctions comparing it
            if rng and rng != [FULL]:
                out[fact] = rng
        return out

    def _report_bands(self, members: dict[str, tuple[Node, Path_, str | None]], kind: str,
                      overlap_ok: Callable[[str, str], bool], overlap_severity: str = "error") -> None:
        ranges = {name: self._band_ranges(node) for name, (node, _, _) in members.items()}
        facts: dict[str, list[str]] = defaultdict(list)
        for name, by_fact in ranges.items():
            for fact in by_fact:
                facts[fact].append(name)
        together: dict[tuple[str, str], bool] = {}
        for fact, names in sorted(facts.items()):
            if len(names) < 2:
                continue
            label = ", ".join(names)
            covered = union(iv for n in names for iv in ranges[n][fact])
            whole = fact_kind(fact) == "integer"
            for hole in holes(covered):
                if whole and integers(hole) is None:
                    continue  # no whole number falls between the bands of a count
                left = next(n for n in names if any(iv.hi == hole.lo for iv in ranges[n][fact]))
                right = next((n for n in names if any(iv.lo == hole.hi for iv in ranges[n][fact])), left)
                _, path, rule_id = members[right]
                where = f"gap in the {kind} {label} over {fact}"
                if hole.point:
                    msg = (f"{where}: a value of exactly {fmt_value(hole.lo)} falls in none of them ({left} "
                           f"ends just below, {right} starts just above) — make one of the two bounds "
                           "inclusive (lte/gte)")
                    self.add(path, rule_id, msg)
                else:
                    msg = (f"{where}: values {fmt_interval(hole)} fall in none of them — extend {left} or "
                           f"{right} to meet, or add a {kind[:-1]} for that range")
                    self.add(path, rule_id, msg, "warning")
            for a, b in combinations(names, 2):
                if overlap_ok(a, b):
                    continue
                common = intersect_sets(ranges[a][fact], ranges[b][fact])
                if not common:
                    continue
                if (a, b) not in together:  # asked once per pair, not once per fact
                    together[a, b] = self.possible(members[a][0], members[b][0])
                if not together[a, b]:
                    continue
                try:
                    joint = self.x.joint_projection(self.x.dnf(members[a][0], "is_true"),
                                                    self.x.dnf(members[b][0], "is_true"), fact)
                except TooComplex:
                    self.skipped.append(f"overlap of {a} and {b} over {fact}")
                    continue
                shared = joint or common
                _, path, rule_id = members[b]
                text = "; ".join(fmt_interval(iv) for iv in shared)
                self.add(path, rule_id,
                         f"overlap in the {kind} {label} over {fact}: a patient with {fact} {text} matches "
                         f"both {a} and {b} — make one bound strict (lt/gt) so each value falls in one "
                         f"{kind[:-1]}", overlap_severity)

    def definition_bands(self) -> None:
        compiled = self.definitions()
        groups: dict[str, list[str]] = defaultdict(list)
        for name in self.spec.definitions:
            if "_" in name:
                groups[name.rsplit("_", 1)[0]].append(name)
        for _prefix, names in sorted(groups.items()):
            if len(names) < 2:
                continue
            members = {n: (compiled[n], ("definitions", n), None) for n in names}
            self._report_bands(members, "bands", lambda a, b: False)

    def tier_bands(self) -> None:
        for ri, rule in enumerate(self.pack.rules):
            if len(rule.tiers) < 2:
                continue
            members = {t.id: (t.node, ("rules", ri, "tiers", ti), rule.spec.id)
                       for ti, t in enumerate(rule.tiers)}
            severity = {t.id: t.severity for t in rule.tiers}

            def differ(a: str, b: str, severity: dict[str, str] = severity) -> bool:
                return severity[a] != severity[b]

            # tiers of different severity may overlap on purpose: the most severe one is raised; tiers of
            # one severity that overlap make the pack order decide which message shows
            self._report_bands(members, "tiers", differ, "warning")

    # parameters
    def unused_parameters(self) -> None:
        used = set(ENGINE_PARAMETERS)
        for value in _walk(self.spec):
            if isinstance(value, s.ParamRef | s.ParamTest):
                used.add(value.param)
            elif isinstance(value, str):
                used |= {p[6:] for p in _PLACEHOLDER.findall(value) if p.startswith("param.")}
        for name in self.spec.parameters:
            if name not in used:
                self.add(("parameters", name), None,
                         f"parameter {name!r} is defined but no condition or message uses it: remove it, or "
                         "reference it ({param: " + name + "}) where it was meant to apply", "warning")

    # messages
    def message_facts(self) -> None:
        for ri, rule in enumerate(self.pack.rules):
            read = {leaf.fact for t in rule.tiers for leaf in facts_of(t.node)}
            read |= {c for f in list(read) for c in catalog.companions(f)}  # names shown with a class count
            read.add("medication_lists_complete")
            for path, where, text in self._texts(ri, rule):
                unread = [n for n in dict.fromkeys(placeholders(text))
                          if not n.startswith("param.") and n not in _SPECIAL_PLACEHOLDERS and n not in read]
                if unread:
                    self.add(path, rule.spec.id,
                             f"{where} shows {', '.join(unread)}, which rule {rule.spec.id} does not read: "
                             "the alert's evidence will not include the value — test it in a condition or "
                             "drop it from the message", "warning")

    def _rule_parameters(self, rule: CompiledRule) -> set[str]:
        """Parameters a rule's conditions use (through definitions too)."""
        names: set[str] = set()
        seen: set[str] = set()
        stack: list[Any] = [rule.spec.applies, *(t.when for t in rule.spec.tiers)]
        while stack:
            for value in _walk(stack.pop()):
                if isinstance(value, s.ParamRef | s.ParamTest):
                    names.add(value.param)
                elif isinstance(value, s.Ref) and value.ref in self.spec.definitions.keys() - seen:
                    seen.add(value.ref)
                    stack.append(self.spec.definitions[value.ref])
        return names

    def _texts(self, ri: int, rule: CompiledRule) -> list[tuple[Path_, str, str]]:
        texts: list[tuple[Path_, str, str]] = [(("rules", ri, "summary"), "summary", rule.spec.summary),
                                               (("rules", ri, "detail"), "detail", rule.spec.detail)]
        for ti, tier in enumerate(rule.spec.tiers):
            for key in ("summary", "detail"):
                text = getattr(tier, key)
                if text:
                    texts.append((("rules", ri, "tiers", ti, key), f"{tier.id} {key}", text))
        return texts

    def summary_lengths(self) -> None:
        widths = self._string_widths()
        for ri, rule in enumerate(self.pack.rules):
            for ti, tier in enumerate(rule.tiers):
                own = rule.spec.tiers[ti].summary
                text = own or rule.spec.summary
                length, longest = self._worst_length(text, rule, tier.id, widths)
                compiler_bound = len(_PLACEHOLDER.sub("x" * 8, text))
                if length > SUMMARY_LIMIT and compiler_bound < 140:
                    path = ("rules", ri, "tiers", ti, "summary") if own else ("rules", ri, "summary")
                    because = f" when {{{longest}}} is long" if longest else ""
                    self.add(path, rule.spec.id,
                             f"summary of {tier.id} can reach {length} characters{because}; cards cut it at "
                             f"{SUMMARY_LIMIT} — shorten the fixed text", "warning")

    def _string_widths(self) -> dict[str, int]:
        """Longest literal each text fact is compared with anywhere in the pack."""
        out: dict[str, int] = {}
        for tier in self.pack.tiers:
            for leaf in facts_of(tier.node):
                values = leaf.value if isinstance(leaf.value, tuple) else (leaf.value,)
                for v in values:
                    if isinstance(v, str):
                        out[leaf.fact] = max(out.get(leaf.fact, 0), len(v))
        return out

    def _worst_length(self, text: str, rule: CompiledRule, tier_id: str,
                      widths: dict[str, int]) -> tuple[int, str | None]:
        total = 0
        longest: tuple[int, str | None] = (0, None)
        last = 0
        for m in _PLACEHOLDER.finditer(text):
            total += m.start() - last
            last = m.end()
            name = m.group(1)
            w = self._width(name, rule, tier_id, widths)
            total += w
            if w > longest[0] and not name.startswith("param."):
                longest = (w, name)
        total += len(text) - last
        return total, longest[1] if longest[0] > _NUMBER_WIDTH else None

    def _width(self, name: str, rule: CompiledRule, tier_id: str, widths: dict[str, int]) -> int:
        if name.startswith("param."):
            return len(fmt_value(self.pack.params.get(name[6:])))
        if name == "rule_id":
            return len(rule.spec.id)
        if name == "tier_id":
            return len(tier_id)
        if name == "severity":
            return len("critical")
        spec, family, _ = catalog.lookup(name)
        ftype = spec.type if spec else family.type if family else "string"
        if ftype == "bool":
            return 3
        if ftype == "number":
            return _NUMBER_WIDTH + (1 if spec is not None and spec.bounded else 0)
        return max(_STRING_WIDTH, widths.get(name, 0))


def _walk(value: Any) -> Iterator[Any]:
    """Every model, list item and string inside a pack spec."""
    yield value
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _walk(getattr(value, name))
    elif isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _walk(v)


def format_findings(findings: Iterable[Finding]) -> list[str]:
    return [str(f) for f in findings]
