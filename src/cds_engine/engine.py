"""The engine: compiled packs + an evaluator → alerts stamped with pack id, version and hash.

``Engine.from_dir("rules/")`` loads the shared vocabulary (``rules/vocabulary``) and every pack
(``rules/*/pack.yaml``). ``engine.evaluate(facts)`` runs each *applicable* pack: one whose drug
is ordered, or one of whose partner classes is ordered while the pack's drug is active (an
opioid ordered for a patient on the pack's drug is checked too), or — with no order — one whose
drug is among the active medicines (batch screening of current therapy).

Two evaluators give identical outcomes: ``rete`` (durable_rules, the default) and ``oracle``
(plain Python over the same condition trees).
"""

from __future__ import annotations

import gc
import itertools
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

from cds_engine import metrics
from cds_engine.alerts import Alert
from cds_engine.evaluation import EvaluationResult, NotApplicable, PackRef
from cds_engine.facts.derive import ACTIVE_ACTIONS, derive
from cds_engine.facts.model import PatientFacts
from cds_engine.results import build_alerts
from cds_engine.rules.compile import CompiledPack, load_pack
from cds_engine.rules.conditions import BOUND_SUFFIXES, evaluate, facts_of
from cds_engine.rules.errors import Finding, PackLoadError
from cds_engine.rules.rete import EngineFailure, ReteEvaluator
from cds_engine.rules.safe_paths import require_inside
from cds_engine.rules.site import declared_parameters, resolve_site
from cds_engine.rules.yaml_lines import parse_once
from cds_engine.vocabulary import Vocabulary

__all__ = ["Engine", "EvaluationResult", "EvaluatorName", "OracleEvaluator", "project"]

EvaluatorName = Literal["rete", "oracle"]
EVALUATORS: tuple[str, ...] = ("rete", "oracle")
log = logging.getLogger(__name__)
_slots = itertools.count()


class TierEvaluator(Protocol):
    def outcomes(self, projected: Mapping[str, Any]) -> dict[str, int]: ...


class OracleEvaluator:
    """Plain-Python evaluation of the condition trees: the reference the others must match."""

    def __init__(self, pack: CompiledPack) -> None:
        self._tiers = [(t.id, t.node) for t in pack.tiers]

    def outcomes(self, projected: Mapping[str, Any]) -> dict[str, int]:
        return {tier_id: evaluate(node, projected) for tier_id, node in self._tiers}


def project(flat: Mapping[str, Any], referenced: Mapping[str, Any]) -> dict[str, Any]:
    """Only the facts a pack reads, with family defaults filled in (0 opioids, not 'missing')."""
    get = flat.get
    return {name: value for name, default in referenced.items() if (value := get(name, default)) is not None}


def _evaluator_key(pack: CompiledPack) -> str:
    """A thread's evaluator cache key: the pack and its content (an edited pack gets a new evaluator)."""
    return f"{pack.id}:{pack.content_hash}"


class Engine:
    """Evaluate patients against compiled rule packs."""

    def __init__(
        self,
        packs: Iterable[CompiledPack],
        evaluator: EvaluatorName = "rete",
        statuses: tuple[str, ...] = ("active",),
        site_hash: str | None = None,
    ) -> None:
        if evaluator not in EVALUATORS:
            raise ValueError(f"evaluator must be one of {', '.join(EVALUATORS)}, not {evaluator!r}")
        self.packs = list(packs)
        self.evaluator_name = evaluator
        self.statuses = statuses
        self.site_hash = site_hash  # sha256 of the site settings file, recorded on every alert
        self._referenced = {p.id: p.referenced_facts() for p in self.packs}
        self._local = threading.local()
        self.fallbacks = 0  # Rete failures answered by the oracle instead (must stay 0; see health)
        self._created: list[ReteEvaluator] = []  # every thread's rulesets, so close() can free them
        self._created_lock = threading.Lock()
        # pack id -> (pack, keys its one-click tiers read, whether outcomes can stand for the oracle)
        self._one_click_plan: dict[str, tuple[CompiledPack, tuple[str, ...], bool]] = {}

    @classmethod
    def from_dir(
        cls,
        directory: str | Path = "rules",
        evaluator: EvaluatorName = "rete",
        statuses: tuple[str, ...] = ("active",),
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        site: str | Path | bool | None = True,
    ) -> Engine:
        """Load ``directory/vocabulary`` and every ``directory/*/pack.yaml``.

        ``site``: the site settings file laid over the packs (local policy; ``True`` = use
        ``directory/site.yaml`` when it exists, ``None``/``False`` = none); its hash is recorded on
        every alert. ``overrides`` maps a pack id to further parameter values (they win over the site
        file). Raises :class:`PackLoadError` listing every error of every invalid pack, and when the
        directory does not exist or holds no pack (an engine with no pack would answer "no alerts").
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise PackLoadError([Finding(str(directory), None, None, "rules directory not found")])
        paths = sorted(directory.glob("*/pack.yaml"))
        if not paths:
            message = "no rule packs found: expected DIR/<pack>/pack.yaml files"
            raise PackLoadError([Finding(str(directory), None, None, message)])
        with _collector_paused():  # see _collector_paused: a third of a load was cycle collection
            settings = resolve_site(directory, site)
            vocab = Vocabulary.from_dir(directory / "vocabulary")
            packs, findings = [], []
            findings.extend(settings.unknown_packs(p.parent.name for p in paths))
            for path in paths:
                try:  # a pack file linked out of the directory is refused before it is read
                    text = require_inside(path, directory).read_text(encoding="utf-8", errors="replace")
                except PackLoadError as exc:
                    findings.extend(exc.findings)
                    continue
                # parsed once here, for the parameters and (when the file reads the same) the compiler
                parsed = parse_once(text)
                declared = declared_parameters(parsed.text, parsed)
                findings.extend(settings.check(path.parent.name, declared))
                pack_overrides = {
                    **settings.for_pack(path.parent.name, declared),
                    **(overrides or {}).get(path.parent.name, {}),
                }
                try:
                    packs.append(load_pack(path, vocab, pack_overrides, parsed))
                except PackLoadError as exc:
                    findings.extend(exc.findings)
            if findings:
                raise PackLoadError(findings)
        return cls(packs, evaluator, statuses, settings.sha256)

    def _evaluator(self, pack: CompiledPack) -> TierEvaluator:
        cache: dict[str, TierEvaluator] | None = getattr(self._local, "evaluators", None)
        if cache is None:
            cache = self._local.evaluators = {}
        key = _evaluator_key(pack)
        if key not in cache:
            if self.evaluator_name == "rete":
                # one ruleset per thread and pack, so threads never share a durable session
                evaluator = ReteEvaluator(pack, slot=f"slot-{next(_slots)}")
                with self._created_lock:
                    self._created.append(evaluator)
                cache[key] = evaluator
            else:
                cache[key] = OracleEvaluator(pack)
        return cache[key]

    def _forget_broken(self, pack: CompiledPack) -> None:
        """Drop this thread's evaluator of ``pack`` if it refuses to answer any more (a durable_rules
        error left its session in an unknown state): the next call builds a new one instead of
        falling back to the oracle for good. Closed with the engine, like every evaluator made."""
        cache: dict[str, TierEvaluator] | None = getattr(self._local, "evaluators", None)
        key = _evaluator_key(pack)
        if cache is not None and getattr(cache.get(key), "broken", False):
            del cache[key]

    @property
    def running_packs(self) -> list[CompiledPack]:
        """Packs whose status this engine evaluates (by default only ``active`` ones)."""
        return [p for p in self.packs if p.spec.pack.status in self.statuses]

    def close(self) -> None:
        """Free the durable rulesets of every thread (after a hot reload swapped this engine out).

        A request still running on a closed engine is answered by the oracle, never with "no alerts".
        """
        with self._created_lock:
            created, self._created = self._created, []
        for evaluator in created:
            evaluator.close()

    def applicable(
        self, facts: PatientFacts, flats: dict[str, dict[str, Any]] | None = None
    ) -> list[CompiledPack]:
        """Packs that should review this patient (see module docstring)."""
        return self.applicability(facts, flats)[0]

    def applicability(
        self, facts: PatientFacts, flats: dict[str, dict[str, Any]] | None = None
    ) -> tuple[list[CompiledPack], list[NotApplicable]]:
        """Packs that should review this patient, and every other pack with the reason it does not."""
        out: list[CompiledPack] = []
        skipped: list[NotApplicable] = []
        for pack in self.packs:
            if pack.spec.pack.status not in self.statuses:
                reason = f"pack status {pack.spec.pack.status} is not evaluated here"
                skipped.append(NotApplicable(pack.id, pack.version, reason))
                continue
            vocab, triggers = pack.vocabulary, pack.spec.pack.triggers
            drug = pack.context.drug_class
            active_classes: set[str] = set()
            for med in facts.medications:
                if med.status == "active":
                    active_classes |= set(med.classes) | vocab.classify(med.product, "drug_class")
                    product = vocab.product(med.product)
                    if product is not None:
                        active_classes.add(product.ingredient_group)
            if triggers.facts:
                flat = derive(facts, vocab, pack.context)
                if flats is not None:
                    flats[pack.id] = flat  # evaluate() reuses it: derive once per patient and pack
                if any(flat.get(name) is True for name in triggers.facts):
                    out.append(pack)
                    continue
            order = facts.order
            if order is None:
                if drug in active_classes:
                    out.append(pack)
                else:
                    skipped.append(NotApplicable(pack.id, pack.version, f"no {drug} order and none active"))
                continue
            order_classes = vocab.classify(order.product, "drug_class")
            product = vocab.product(order.product)
            if product is not None:
                order_classes.add(product.ingredient_group)
            if order_classes & set(triggers.drug_classes) or (
                order_classes & set(triggers.partner_classes)
                and drug in active_classes
                and order.action in ACTIVE_ACTIONS
            ):
                out.append(pack)
            else:
                skipped.append(NotApplicable(pack.id, pack.version, _why_not(drug, order_classes, triggers,
                                                                             active_classes, order.action)))
        return out, skipped

    def flat_facts(self, pack: CompiledPack, facts: PatientFacts) -> dict[str, Any]:
        return derive(facts, pack.vocabulary, pack.context)

    def evaluate_pack(
        self, pack: CompiledPack, facts: PatientFacts, flat: Mapping[str, Any] | None = None
    ) -> list[Alert]:
        return self.evaluate_pack_outcomes(pack, facts, flat)[0]

    def evaluate_pack_outcomes(
        self, pack: CompiledPack, facts: PatientFacts, flat: Mapping[str, Any] | None = None
    ) -> tuple[list[Alert], dict[str, int]]:
        """:meth:`evaluate_pack`, and the tier outcomes (TRUE / FALSE / UNKNOWN) its alerts came from.

        The hook reuses the outcomes for the one-click limits (:meth:`one_click_truths`) instead of
        walking the same trees again with the oracle (issue 19: that walk cost ~3 % of a call).
        """
        if flat is None:
            flat = self.flat_facts(pack, facts)
        projected = project(flat, self._referenced[pack.id])
        try:
            outcomes = self._evaluator(pack).outcomes(projected)
        except EngineFailure as exc:
            # A Rete error must never read as "no alerts": answer from the oracle (same trees) and say so.
            self._forget_broken(pack)
            self.fallbacks += 1
            metrics.EVALUATOR_FALLBACKS.labels(metrics.label(pack.id)).inc()
            log.error("rete evaluation failed for pack %s (%s); oracle used", pack.id, exc)
            outcomes = OracleEvaluator(pack).outcomes(projected)
        return build_alerts(pack, flat, outcomes, site_hash=self.site_hash), outcomes

    def one_click_truths(
        self, pack: CompiledPack, flat: Mapping[str, Any], outcomes: Mapping[str, int]
    ) -> dict[str, int] | None:
        """The outcomes of the pack's one-click tiers when they are the oracle's on ``flat``, else None.

        :func:`~cds_engine.rules.one_click.limits` reads tier truths computed on the flat facts;
        the evaluator's outcomes were computed on their projection (:func:`project`), which equals
        the oracle on that projection (the parity tests). The two inputs read alike for a tier
        unless a key its leaves read is present in ``flat`` as None (the projection drops it, and
        may fill a default), or the projection's default for a fact is not the leaf's own: then
        None is returned and the caller walks the trees as before. Never a guess: any doubt → None.
        """
        plan = self._one_click_plan.get(pack.id)
        if plan is None or plan[0] is not pack:
            plan = self._one_click_plan[pack.id] = (pack, *self._plan_one_click(pack))
        _, keys, usable = plan
        if not usable or any(flat.get(key, _ABSENT) is None for key in keys):
            return None
        truths = {tier_id: outcomes[tier_id] for tier_id in pack.one_click if tier_id in outcomes}
        return truths if len(truths) == len(pack.one_click) else None

    def _plan_one_click(self, pack: CompiledPack) -> tuple[tuple[str, ...], bool]:
        """(keys the one-click tiers read, whether the projection's defaults are theirs) of a pack."""
        referenced = self._referenced.get(pack.id)
        if referenced is None:
            return (), False
        keys: dict[str, None] = {}
        usable = True
        for tier in pack.tiers:
            if tier.id not in pack.one_click:
                continue
            for leaf in facts_of(tier.node):
                keys[leaf.fact] = None
                if leaf.fact not in referenced or not _same(referenced[leaf.fact], leaf.default):
                    usable = False
                if leaf.bounded:
                    for suffix in BOUND_SUFFIXES:
                        keys[leaf.fact + suffix] = None
                        if referenced.get(leaf.fact + suffix, _ABSENT) is not None:
                            usable = False
        return tuple(keys), usable

    def evaluate(self, facts: PatientFacts | Mapping[str, Any]) -> EvaluationResult:
        """Alerts of every applicable pack, most severe first — with the packs evaluated and not applicable.

        The result is a list of alerts; ``.evaluated`` and ``.not_applicable`` say what it covers
        (an empty list with nothing evaluated is not an all-clear).
        """
        if not isinstance(facts, PatientFacts):
            facts = PatientFacts.model_validate(facts)
        alerts: list[Alert] = []
        flats: dict[str, dict[str, Any]] = {}
        packs, skipped = self.applicability(facts, flats)
        for pack in packs:
            alerts.extend(self.evaluate_pack(pack, facts, flats.get(pack.id)))
        evaluated = [PackRef(p.id, p.version, p.content_hash) for p in packs]
        return EvaluationResult(sorted(alerts, key=Alert.sort_key), evaluated, skipped)


_ABSENT = object()


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a rules directory is loaded (restored as it was after).

    Why: a load builds ~40,000 objects (YAML nodes, vocabulary rows, the compiled trees) without
    reference cycles, and each few hundred of them set off a collection that walks the survivors
    again, the oldest generation once — measured at ~30-40 ms of a ~110 ms load in a fresh process.
    Reference counting still frees everything; a cycle made meanwhile (an error's traceback) is
    collected after. Nested or concurrent pauses never leave the collector off: only a pause that
    found it on turns it back on, so at worst another pause ends sooner than it meant to.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _same(a: Any, b: Any) -> bool:
    """Equal and of one type (``0``, ``0.0`` and ``False`` compare equal but are not the same default)."""
    return type(a) is type(b) and a == b


def _why_not(drug: str, order_classes: set[str], triggers: Any, active: set[str], action: str | None) -> str:
    partners = order_classes & set(triggers.partner_classes)
    if partners and drug not in active:
        return f"the order is a partner drug ({', '.join(sorted(partners))}) and no {drug} is active"
    if partners:
        return f"the partner-drug order's action is {action}, not a new or continued order"
    if not order_classes:
        return f"the ordered product is not in the vocabulary, so it is not recognised as {drug}"
    return f"the order is neither {drug} nor one of its partner drugs, and no {drug} order is present"
