"""Shadow mode: what would change for a population if the new pack version replaced the old one?

``cds-engine rules diff OLD NEW --on PATIENTS`` screens every patient with both versions and
reports, per rule, how many alerts **appear**, **disappear** or **change severity**, with
example patients — the evidence a committee needs before activating a change (lowering
``max_daily_mg`` from 80 to 60 must add exactly the patients on 61–80 mg/day, nothing else).

Patients come as PatientFacts JSON, fixture files (``{"facts": …}``), JSON lists of either, or
FHIR R4 Bundles (``.json`` / ``.json.gz``, e.g. Synthea) mapped by :mod:`cds_engine.sources.fhir`
at ``as_of``. ``assumed_order`` puts the same draft order on every patient ("what if each of
them were prescribed X?"), which is how a population without the drug is screened.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cds_engine.alerts import Alert
from cds_engine.engine import Engine, EvaluatorName
from cds_engine.facts.model import Order, PatientFacts
from cds_engine.rules.compile import CompiledPack, load_pack
from cds_engine.rules.errors import Finding, PackLoadError
from cds_engine.rules.site import resolve_site
from cds_engine.vocabulary import Vocabulary

__all__ = ["DiffReport", "Patient", "RuleDelta", "assumed_order", "diff_engines", "iter_population",
           "load_version"]

_ALL_STATUSES = ("draft", "active", "retired")
EXAMPLES = 3


@dataclass
class Patient:
    """One patient of the population: facts per drug class (FHIR maps differ by the pack's drug)."""

    id: str
    source: str
    facts: PatientFacts | None = None  # ready-made facts (JSON input)
    resources: list[dict[str, Any]] | None = None  # FHIR input, mapped per drug class

    def facts_for(self, drug_class: str, vocab: Vocabulary, as_of: datetime,
                  cache: dict[tuple[str, str], PatientFacts]) -> PatientFacts:
        if self.facts is not None:
            return self.facts
        key = (self.id, drug_class)
        if key not in cache:
            from cds_engine.sources.fhir import facts_from_resources

            cache[key] = facts_from_resources(self.resources or [], as_of=as_of, vocab=vocab,
                                              drug_class=drug_class)
        return cache[key]


@dataclass
class RuleDelta:
    pack_id: str
    rule_id: str  # a rule id, or missing-data.<item> for cannot-assess reports
    old: int = 0
    new: int = 0
    appeared: list[str] = field(default_factory=list)
    disappeared: list[str] = field(default_factory=list)
    changed: list[tuple[str, str, str]] = field(default_factory=list)  # patient, old severity/tier, new

    @property
    def touched(self) -> bool:
        return bool(self.appeared or self.disappeared or self.changed)

    def as_dict(self) -> dict[str, Any]:
        return {"pack": self.pack_id, "rule": self.rule_id, "old": self.old, "new": self.new,
                "appear": len(self.appeared), "disappear": len(self.disappeared),
                "severity_changed": len(self.changed),
                "examples": {"appear": self.appeared[:EXAMPLES], "disappear": self.disappeared[:EXAMPLES],
                             "severity_changed": [list(c) for c in self.changed[:EXAMPLES]]}}


@dataclass
class DiffReport:
    old: list[tuple[str, str, str]]  # (pack id, version, hash)
    new: list[tuple[str, str, str]]
    patients: int
    deltas: dict[tuple[str, str], RuleDelta]
    skipped: list[str] = field(default_factory=list)
    deceased: int = 0  # left out, as ``screen`` leaves them out (so the two give the same counts)

    def changed(self) -> list[RuleDelta]:
        return [d for _, d in sorted(self.deltas.items()) if d.touched]

    def totals(self) -> dict[str, int]:
        ds = self.deltas.values()
        return {"appear": sum(len(d.appeared) for d in ds), "disappear": sum(len(d.disappeared) for d in ds),
                "severity_changed": sum(len(d.changed) for d in ds)}

    def as_dict(self) -> dict[str, Any]:
        return {"old": [dict(zip(("pack", "version", "hash"), o, strict=True)) for o in self.old],
                "new": [dict(zip(("pack", "version", "hash"), n, strict=True)) for n in self.new],
                "patients": self.patients, "deceased_left_out": self.deceased, "totals": self.totals(),
                "rules": [d.as_dict() for _, d in sorted(self.deltas.items())], "skipped": self.skipped}


# ───────────────────────── loading the two versions ─────────────────────────


def _vocabulary_dir(path: Path, fallback: Path | None) -> Path:
    for candidate in (path / "vocabulary", path.parent / "vocabulary", path.parent.parent / "vocabulary"):
        if (candidate / "codes.csv").is_file():
            return candidate
    if fallback is not None:
        return fallback
    raise PackLoadError([Finding(str(path), None, None,
                                 "no vocabulary found next to this pack: pass --vocabulary DIR")])


def load_version(path: str | Path, evaluator: EvaluatorName = "oracle", vocabulary: Path | None = None,
                 site: str | Path | bool | None = True) -> Engine:
    """An engine over a rule directory (``DIR/*/pack.yaml``) or a single ``pack.yaml``, any status."""
    path = Path(path)
    if path.is_dir() and any(path.glob("*/pack.yaml")):
        return Engine.from_dir(path, evaluator, statuses=_ALL_STATUSES, site=site)
    if path.is_dir() and (path / "pack.yaml").is_file():
        path = path / "pack.yaml"
    if not path.is_file():
        raise PackLoadError([Finding(str(path), None, None, "not a rule directory or a pack.yaml file")])
    vocab = Vocabulary.from_dir(_vocabulary_dir(path.parent, vocabulary))
    settings = resolve_site(path.parent.parent, site) if site is True else resolve_site(path.parent, site)
    pack = load_pack(path, vocab, settings.for_pack(path.parent.name))
    return Engine([pack], evaluator, statuses=_ALL_STATUSES, site_hash=settings.sha256)


def assumed_order(text: str, engine: Engine) -> Order:
    """The ``--assume-order`` text as an Order: prescriber shorthand (the batch parser, which looks the
    drug up in the vocabulary) or, for what shorthand cannot say, an Order as a JSON object."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return Order.model_validate(json.loads(text))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise ValueError(f"order JSON is not a valid Order: {exc}") from exc
    from cds_engine.batch.order_text import parse_order_text

    if not engine.packs:
        raise ValueError("no pack loaded: the order's drug cannot be looked up")
    return parse_order_text(text, engine.packs[0].vocabulary).to_order()


# ───────────────────────── the population ─────────────────────────


def _read_json(path: Path) -> Any:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        return json.load(fh)


def _patients_in(doc: Any, source: str, skipped: list[str]) -> Iterator[Patient]:
    if isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from _patients_in(item, f"{source}[{i}]", skipped)
        return
    if not isinstance(doc, dict):
        skipped.append(f"{source}: not a JSON object")
        return
    if doc.get("resourceType") == "Bundle":
        from cds_engine.sources.fhir import bundle_resources

        resources = bundle_resources(doc)
        patient = next((r for r in resources if r.get("resourceType") == "Patient"), None)
        if patient is None:
            skipped.append(f"{source}: bundle without a Patient (e.g. practitioner/hospital data)")
            return
        yield Patient(str(patient.get("id") or source), source, resources=resources)
        return
    raw = doc["facts"] if "facts" in doc and "as_of" not in doc else doc
    try:
        facts = PatientFacts.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        skipped.append(f"{source}: invalid facts at {'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
        return
    yield Patient(str(doc.get("id") or facts.patient_id or source), source, facts=facts)


def iter_population(path: str | Path, skipped: list[str]) -> Iterator[Patient]:
    """Patients of a file or a directory tree (``*.json``, ``*.json.gz``), in file-name order."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and p.name.endswith((".json", ".json.gz")))
    for file in files:
        try:
            doc = _read_json(file)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            skipped.append(f"{file}: cannot read JSON: {exc}")
            continue
        yield from _patients_in(doc, str(file), skipped)


# ───────────────────────── the comparison ─────────────────────────


def _keyed(alerts: list[Alert]) -> dict[tuple[str, str], Alert]:
    out = {}
    for a in alerts:
        key = (a.pack_id, a.rule_id if a.kind == "finding" else a.tier_id)
        out[key] = a
    return out


def _evaluate(engine: Engine, patient: Patient, as_of: datetime, order: Order | None,
              cache: dict[tuple[str, str], PatientFacts], pack_ids: set[str] | None) -> list[Alert]:
    alerts: list[Alert] = []
    for pack in engine.packs:
        if pack_ids is not None and pack.id not in pack_ids:
            continue
        facts = patient.facts_for(pack.context.drug_class, pack.vocabulary, as_of, cache)
        if order is not None:
            facts = facts.model_copy(update={"order": order})
        if pack in engine.applicable(facts):
            alerts.extend(engine.evaluate_pack(pack, facts))
    return alerts


def _describe(pack: CompiledPack) -> tuple[str, str, str]:
    return (pack.id, pack.version, pack.content_hash[:12])


def diff_engines(old: Engine, new: Engine, patients: Iterator[Patient], *, as_of: datetime,
                 assumed_order: Order | None = None, pack_ids: set[str] | None = None,
                 skipped: list[str] | None = None) -> DiffReport:
    """Evaluate every patient with both engines and count appear/disappear/severity changes per rule."""
    skipped = skipped if skipped is not None else []
    deltas: dict[tuple[str, str], RuleDelta] = {}
    cache_old: dict[tuple[str, str], PatientFacts] = {}
    cache_new: dict[tuple[str, str], PatientFacts] = {}
    count = deceased = 0

    def delta(key: tuple[str, str]) -> RuleDelta:
        if key not in deltas:
            deltas[key] = RuleDelta(*key)
        return deltas[key]

    for patient in patients:
        if _is_deceased(old, patient, as_of, cache_old):
            deceased += 1
            cache_old.clear()
            continue
        try:
            before = _keyed(_evaluate(old, patient, as_of, assumed_order, cache_old, pack_ids))
            after = _keyed(_evaluate(new, patient, as_of, assumed_order, cache_new, pack_ids))
        except (ValueError, KeyError, TypeError) as exc:
            skipped.append(f"{patient.source}: cannot evaluate: {exc}")
            continue
        finally:
            cache_old.clear()
            cache_new.clear()
        count += 1
        for key in before.keys() | after.keys():
            d = delta(key)
            a, b = before.get(key), after.get(key)
            d.old += a is not None
            d.new += b is not None
            if a is None:
                d.appeared.append(patient.id)
            elif b is None:
                d.disappeared.append(patient.id)
            elif a.severity != b.severity:
                d.changed.append((patient.id, f"{a.severity} ({a.tier_id})", f"{b.severity} ({b.tier_id})"))
    for engine in (old, new):
        for pack in engine.packs:
            for rule in pack.rules:
                if pack_ids is None or pack.id in pack_ids:
                    delta((pack.id, rule.spec.id))
    return DiffReport([_describe(p) for p in old.packs], [_describe(p) for p in new.packs], count,
                      deltas, skipped, deceased)


def _is_deceased(engine: Engine, patient: Patient, as_of: datetime,
                 cache: dict[tuple[str, str], PatientFacts]) -> bool:
    for pack in engine.packs[:1]:
        try:
            return patient.facts_for(pack.context.drug_class, pack.vocabulary, as_of, cache).deceased
        except (ValueError, KeyError, TypeError):
            return False  # reported as "cannot evaluate" by the comparison itself
    return False


def group_counts(report: DiffReport) -> dict[str, dict[str, int]]:
    """{pack: {appear, disappear, severity_changed}} — a one-line summary per pack."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"appear": 0, "disappear": 0, "severity_changed": 0})
    for d in report.deltas.values():
        out[d.pack_id]["appear"] += len(d.appeared)
        out[d.pack_id]["disappear"] += len(d.disappeared)
        out[d.pack_id]["severity_changed"] += len(d.changed)
    return dict(out)
