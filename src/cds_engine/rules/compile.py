"""Load a pack file, validate it, and compile its conditions into :mod:`conditions` trees.

Loading is all-or-nothing: any finding of severity ``error`` raises :class:`PackLoadError`
with every finding (file, line, rule id), so a running service can refuse the new pack and
keep its last good one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cds_engine.facts import catalog
from cds_engine.facts.derive import DrugContext
from cds_engine.facts.renal import RenalWindows
from cds_engine.rules import schema as s
from cds_engine.rules.conditions import And, AtLeastNode, Const, Leaf, Node, NotNode, Or, facts_of
from cds_engine.rules.errors import Finding, PackLoadError
from cds_engine.rules.one_click import STEP_PARAMETER, CompiledCap, CompiledOneClick
from cds_engine.rules.safe_paths import require_inside, shown_key
from cds_engine.rules.yaml_lines import LineMap, Parsed, YamlError, load_parsed
from cds_engine.vocabulary import Vocabulary

__all__ = ["CompiledPack", "CompiledRule", "CompiledTier", "compile_pack", "load_pack", "placeholders"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)(?:\|[^}]*)?\}")


def placeholders(template: str) -> list[str]:
    return _PLACEHOLDER.findall(template)


# weakref_slot: results' evidence plans are kept per tier object, weakly (freed with a reloaded pack)
@dataclass(frozen=True, slots=True, weakref_slot=True)
class CompiledTier:
    id: str
    rule_id: str
    severity: str
    node: Node
    summary: str
    detail: str
    order: int  # position in the pack, for stable output


@dataclass(frozen=True, slots=True)
class CompiledRule:
    spec: s.RuleSpec
    tiers: tuple[CompiledTier, ...]
    ranked_tiers: tuple[CompiledTier, ...] = ()  # most severe first, then pack order

    def __post_init__(self) -> None:
        rank = {"critical": 3, "warning": 2, "info": 1}
        ranked = tuple(sorted(self.tiers, key=lambda t: (-rank[t.severity], t.order)))
        object.__setattr__(self, "ranked_tiers", ranked)


@dataclass
class CompiledPack:
    spec: s.Pack
    file: Path
    content_hash: str
    params: dict[str, Any]
    rules: list[CompiledRule]
    vocabulary: Vocabulary
    context: DrugContext
    findings: list[Finding] = field(default_factory=list)  # warnings that did not stop loading
    one_click: dict[str, CompiledOneClick] = field(default_factory=dict)  # tier id -> one-click declaration
    dose_dependent: frozenset[str] = frozenset()  # tiers a one-click suggestion must never trigger

    @property
    def id(self) -> str:
        return self.spec.pack.id

    @property
    def version(self) -> str:
        return self.spec.pack.version

    @property
    def tiers(self) -> list[CompiledTier]:
        return [t for r in self.rules for t in r.tiers]

    def rule(self, rule_id: str) -> CompiledRule:
        return next(r for r in self.rules if r.spec.id == rule_id)

    def referenced_facts(self) -> dict[str, Any]:
        """Facts any tier reads, mapped to the default an absent key stands for (families)."""
        out: dict[str, Any] = {}
        for tier in self.tiers:
            for leaf in facts_of(tier.node):
                out[leaf.fact] = leaf.default
                if leaf.bounded:
                    for suffix in ("__gt", "__ge", "__lt", "__le"):
                        out[leaf.fact + suffix] = None
        return out


class _Compiler:
    def __init__(
        self, pack: s.Pack, params: dict[str, Any], vocab: Vocabulary, file: str, lines: LineMap, raw: Any
    ) -> None:
        self.pack = pack
        self.params = params
        self.vocab = vocab
        self.file = file
        self.lines = lines
        self.raw = raw
        self.findings: list[Finding] = []
        self.definitions: dict[str, Node] = {}
        self._resolving: list[str] = []

    def error(
        self, path: tuple[str | int, ...], rule_id: str | None, message: str, severity: str = "error"
    ) -> None:
        self.findings.append(Finding(self.file, self.lines.line_of(path), rule_id, message, severity))  # type: ignore[arg-type]

    def value(self, v: Any, path: tuple[str | int, ...], rule_id: str | None) -> Any:
        if isinstance(v, s.ParamRef):
            if v.param not in self.params:
                self.error(path, rule_id, f"parameter {v.param!r} is used but not defined in parameters")
                return None
            resolved = self.params[v.param]
            return tuple(resolved) if isinstance(resolved, list) else resolved
        if isinstance(v, list):
            return tuple(self.value(x, path, rule_id) for x in v)
        return v

    def definition(self, name: str, path: tuple[str | int, ...], rule_id: str | None) -> Node:
        if name in self.definitions:
            return self.definitions[name]
        if name not in self.pack.definitions:
            self.error(path, rule_id, f"unknown definition {name!r} in ref")
            return Const(False)
        if name in self._resolving:
            self.error(
                path, rule_id, f"definition {name!r} refers to itself ({' -> '.join(self._resolving)})"
            )
            return Const(False)
        self._resolving.append(name)
        node = self.node(self.pack.definitions[name], ("definitions", name), rule_id)
        self._resolving.pop()
        self.definitions[name] = node
        return node

    def node(self, spec: Any, path: tuple[str | int, ...], rule_id: str | None) -> Node:
        if isinstance(spec, s.AllOf):
            return And(tuple(self.node(c, (*path, "all", i), rule_id) for i, c in enumerate(spec.all)))
        if isinstance(spec, s.AnyOf):
            return Or(tuple(self.node(c, (*path, "any", i), rule_id) for i, c in enumerate(spec.any)))
        if isinstance(spec, s.NotOf):
            return NotNode(self.node(spec.not_, (*path, "not"), rule_id))
        if isinstance(spec, s.AtLeast):
            return AtLeastNode(
                spec.at_least, tuple(self.node(c, (*path, "of", i), rule_id) for i, c in enumerate(spec.of))
            )
        if isinstance(spec, s.Ref):
            return self.definition(spec.ref, path, rule_id)
        if isinstance(spec, s.ParamTest):
            return self.param_test(spec, path, rule_id)
        return self.fact_test(spec, path, rule_id)

    def param_test(self, spec: s.ParamTest, path: tuple[str | int, ...], rule_id: str | None) -> Node:
        if spec.param not in self.params:
            self.error(path, rule_id, f"parameter {spec.param!r} is used but not defined in parameters")
            return Const(False)
        actual = self.params[spec.param]
        if spec.eq is not None:
            return Const(actual == spec.eq)
        if spec.ne is not None:
            return Const(actual != spec.ne)
        return Const(actual in (spec.in_ or []))

    def fact_test(self, spec: s.FactTest, path: tuple[str | int, ...], rule_id: str | None) -> Node:
        op = spec.op
        key = "in" if op == "in" else op
        value = self.value(spec.operand(op), (*path, key), rule_id)
        fact_spec, family, family_key = catalog.lookup(spec.fact)
        default: Any = None
        bounded = False
        always = False
        if fact_spec is not None:
            ftype = fact_spec.type
            bounded = fact_spec.bounded
            always = fact_spec.always
        elif family is not None:
            ftype = family.type
            default = family.default
            always = default is not None
            known = self.vocab.known_groups(family.key_kind)
            if family.key_kind not in ("route", "monitoring") and family_key not in known:
                self.error(
                    (*path, "fact"),
                    rule_id,
                    f"unknown {family.key_kind} {family_key!r} in fact {spec.fact!r}: "
                    f"add it to the vocabulary or fix the name",
                )
        else:
            self.error(
                (*path, "fact"),
                rule_id,
                f"unknown fact {spec.fact!r}: use a fact of the catalog (cds-engine rules facts)",
            )
            return Const(False)
        if op != "exists":
            self._check_type(spec.fact, ftype, op, value, (*path, key), rule_id)
        return Leaf(spec.fact, op, value, spec.missing, bounded, default, always)  # type: ignore[arg-type]

    def _check_type(
        self, fact: str, ftype: str, op: str, value: Any, path: tuple[str | int, ...], rule_id: str | None
    ) -> None:
        values = value if isinstance(value, tuple) else (value,)
        if op in ("in", "not_in") and not isinstance(value, tuple):
            self.error(path, rule_id, f"{op} needs a list of values for fact {fact!r}")
            return
        if op not in ("in", "not_in") and isinstance(value, tuple):
            self.error(path, rule_id, f"{op} compares {fact!r} with a single value, not a list")
            return
        if ftype in ("bool", "string") and op in ("lt", "lte", "gt", "gte"):
            self.error(path, rule_id, f"type mismatch: {op} on {ftype} fact {fact!r} (use eq, ne, in)")
            return
        for v in values:
            ok = {
                "number": isinstance(v, int | float) and not isinstance(v, bool),
                "bool": isinstance(v, bool),
                "string": isinstance(v, str),
            }[ftype]
            if not ok:
                self.error(
                    path,
                    rule_id,
                    f"type mismatch: fact {fact!r} is a {ftype}, compared with {v!r} ({type(v).__name__})",
                )


def _pydantic_findings(exc: ValidationError, raw: Any, lines: LineMap, file: str) -> list[Finding]:
    findings = []
    for err in exc.errors():
        path: list[str | int] = []
        node = raw
        for part in err["loc"]:
            in_dict = isinstance(node, dict) and part in node
            if in_dict or (isinstance(node, list) and isinstance(part, int) and part < len(node)):
                node = node[part]
                path.append(part)
            elif isinstance(node, dict) and part == "in_" and "in" in node:
                node = node["in"]
                path.append("in")
        rule_id = None
        if path[:1] == ["rules"] and len(path) > 1 and isinstance(raw, dict):
            try:
                rule_id = raw["rules"][path[1]].get("id")
            except (AttributeError, IndexError, KeyError, TypeError):
                rule_id = None
        where = ".".join(shown_key(p) for p in err["loc"])  # an unknown key is file content: not echoed
        findings.append(Finding(file, lines.line_of(tuple(path)), rule_id, f"{where}: {err['msg']}"))
    return findings


def _content_hash(pack_bytes: bytes, vocab: Vocabulary, overrides: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(pack_bytes)
    for f in vocab.files:
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    digest.update(json.dumps(dict(overrides), sort_keys=True, default=str).encode())
    return digest.hexdigest()


def compile_pack(
    text: str,
    file: str,
    vocab: Vocabulary,
    overrides: Mapping[str, Any] | None = None,
    content: bytes | None = None,
    parsed: Parsed | None = None,
) -> CompiledPack:
    """Validate and compile pack text; raise :class:`PackLoadError` on any error finding.

    ``parsed``: the parse of ``text`` when the caller already has it (used only if it is of this text).
    """
    overrides = dict(overrides or {})
    try:
        raw, lines = load_parsed(text, parsed)
    except YamlError as exc:
        raise PackLoadError([Finding(file, exc.line, None, str(exc))]) from exc
    try:
        pack = s.Pack.model_validate(raw)
    except ValidationError as exc:
        raise PackLoadError(_pydantic_findings(exc, raw, lines, file)) from exc

    params = {name: p.value for name, p in pack.parameters.items()}
    compiler = _Compiler(pack, params, vocab, file, lines, raw)
    for name, value in overrides.items():
        if name not in params:
            compiler.error(("parameters",), None, f"site setting {name!r} overrides no parameter of the pack")
        else:
            params[name] = value
    for name in pack.definitions:
        compiler.definition(name, ("definitions", name), None)

    rules: list[CompiledRule] = []
    one_click: dict[str, CompiledOneClick] = {}
    dose_dependent: set[str] = set()
    order = 0
    rule_ids = {r.id for r in pack.rules}
    for ri, rule in enumerate(pack.rules):
        base = ("rules", ri)
        applies = (
            compiler.node(rule.applies, (*base, "applies"), rule.id) if rule.applies is not None else None
        )
        tiers = []
        for ti, tier in enumerate(rule.tiers):
            when = compiler.node(tier.when, (*base, "tiers", ti, "when"), rule.id)
            node = And((applies, when)) if applies is not None else when
            tiers.append(
                CompiledTier(
                    tier.id,
                    rule.id,
                    tier.severity,
                    node,
                    tier.summary or rule.summary,
                    tier.detail or rule.detail,
                    order,
                )
            )
            order += 1
            if tier.one_click is not None:
                one_click[tier.id] = _one_click(compiler, tier, (*base, "tiers", ti, "one_click"), rule.id)
            if tier.dose_dependent:
                dose_dependent.add(tier.id)
        for src in rule.sources:
            if src not in pack.sources:
                compiler.error((*base, "sources"), rule.id, f"source {src!r} is not in the pack's sources")
        reason_codes = {r.code for r in pack.override_reasons}
        for code in rule.override_reasons or []:
            if code not in reason_codes:
                compiler.error((*base, "override_reasons"), rule.id,
                               f"override reason {code!r} is not in the pack's override_reasons")
        for si, suggestion in enumerate(rule.suggestions):
            for name in placeholders(suggestion.label):
                _check_placeholder(compiler, name, (*base, "suggestions", si), rule.id)
        for ti, tier in enumerate(tiers):
            for name in placeholders(tier.summary) + placeholders(tier.detail):
                _check_placeholder(compiler, name, (*base, "tiers", ti), rule.id)
            _check_summary_length(compiler, tier, (*base, "tiers", ti))
        rules.append(CompiledRule(rule, tuple(tiers)))
    for mi, item in enumerate(pack.missing_data):
        for rid in item.covered_by:
            if rid not in rule_ids:
                compiler.error(
                    ("missing_data", mi, "covered_by"), None, f"covered_by names unknown rule {rid!r}"
                )
        for fact in item.facts:
            if catalog.lookup(fact) == (None, None, None):
                compiler.error(("missing_data", mi, "facts"), None, f"unknown fact {fact!r} in missing_data")
    for fact in pack.pack.triggers.facts:
        spec, _, _ = catalog.lookup(fact)
        if spec is None or spec.type != "bool":
            compiler.error(
                ("pack", "triggers", "facts"),
                None,
                f"trigger fact {fact!r} must be a bool fact of the catalog",
            )
    for cls in [
        *pack.pack.triggers.drug_classes,
        *pack.pack.triggers.partner_classes,
        pack.pack.drug.drug_class,
    ]:
        if cls not in vocab.known_groups("drug_class"):
            compiler.error(("pack", "triggers"), None, f"drug class {cls!r} is not in the vocabulary")

    _check_step_limit(compiler, params)
    errors = [f for f in compiler.findings if f.severity == "error"]
    if errors:
        raise PackLoadError(compiler.findings)
    ctx = DrugContext(
        drug_class=pack.pack.drug.drug_class,
        dialysis_procedure_lookback_days=float(params.get("dialysis_procedure_lookback_days", 30)),
        renal=RenalWindows(
            current_days=float(params.get("egfr_max_age_days", 90)),
            pair_window_minutes=float(params.get("egfr_pair_window_minutes", 60)),
        ),
        sum_active_oral_orders=params.get("sum_active_oral_orders", True) is not False,
    )
    return CompiledPack(
        pack,
        Path(file),
        _content_hash(content or text.encode(), vocab, overrides),
        params,
        rules,
        vocab,
        ctx,
        [f for f in compiler.findings if f.severity != "error"],
        one_click,
        frozenset(dose_dependent),
    )


def _one_click(
    compiler: _Compiler, tier: s.Tier, path: tuple[str | int, ...], rule_id: str
) -> CompiledOneClick:
    spec = tier.one_click
    assert spec is not None
    caps = []
    for ci, cap in enumerate(spec.caps):
        where = (*path, "caps", ci)
        bound = cap.bound
        plus = 0.0
        if cap.plus is not None:
            plus = float(compiler.value(cap.plus, (*where, "plus"), rule_id) or 0.0)
        when = compiler.node(cap.when, (*where, "when"), rule_id) if cap.when is not None else None
        if isinstance(bound, s.FactValue):
            fact_spec, _, _ = catalog.lookup(bound.fact)
            if fact_spec is None or fact_spec.type != "number":
                compiler.error(where, rule_id, f"cap fact {bound.fact!r} must be a number fact")
            value, fact, label = None, bound.fact, bound.fact
        else:
            resolved = compiler.value(bound, where, rule_id)
            if resolved is not None and not isinstance(resolved, int | float):
                compiler.error(where, rule_id, f"cap parameter {bound.param!r} must be a number")
                resolved = None
            value, fact, label = resolved, None, bound.param
        if cap.plus is not None:
            label += f" + {cap.plus.param}"
        caps.append(CompiledCap(cap.dose, cap.below is not None, value, fact, plus, when, label))
    return CompiledOneClick(tier.id, spec.offer, spec.block, tuple(caps))


def _check_step_limit(compiler: _Compiler, params: Mapping[str, Any]) -> None:
    """A one-click step must stay below what the pack itself calls an abrupt reduction."""
    step, abrupt = params.get(STEP_PARAMETER), params.get("abrupt_reduction_pct")
    if step is None:
        return
    if not isinstance(step, int | float) or not 0 <= step < 100:
        compiler.error(("parameters", STEP_PARAMETER), None, "must be a percentage 0-99")
    elif isinstance(abrupt, int | float) and step >= abrupt:
        compiler.error(
            ("parameters", STEP_PARAMETER),
            None,
            f"{STEP_PARAMETER} ({step}) must be below abrupt_reduction_pct ({abrupt})",
        )


def _check_placeholder(compiler: _Compiler, name: str, path: tuple[str | int, ...], rule_id: str) -> None:
    if name.startswith("param."):
        if name[6:] not in compiler.params:
            compiler.error(path, rule_id, f"message uses undefined parameter {name[6:]!r}")
    elif name not in ("rule_id", "tier_id", "severity") and catalog.lookup(name) == (None, None, None):
        compiler.error(path, rule_id, f"message uses unknown fact {name!r}")


def _check_summary_length(compiler: _Compiler, tier: CompiledTier, path: tuple[str | int, ...]) -> None:
    # a placeholder renders as at most 8 characters (numbers are rounded), so this bounds the card summary
    worst = _PLACEHOLDER.sub("x" * 8, tier.summary)
    if len(worst) >= 140:
        compiler.error(
            path, tier.rule_id, f"summary of {tier.id} can reach {len(worst)} characters (must be < 140)"
        )


def load_pack(
    path: str | Path,
    vocab: Vocabulary,
    overrides: Mapping[str, Any] | None = None,
    parsed: Parsed | None = None,
) -> CompiledPack:
    """Read, check and compile one pack file; ``parsed`` (see :func:`compile_pack`) saves a second parse."""
    path = Path(path)
    content = require_inside(path, path.parent.parent).read_bytes()
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PackLoadError([Finding(str(path), None, None, f"not UTF-8 text: {exc}")]) from exc
    return compile_pack(text, str(path), vocab, overrides, content, parsed)
