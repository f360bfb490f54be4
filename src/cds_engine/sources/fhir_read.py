"""Small, tolerant readers for FHIR R4 JSON: codings, dates, statuses and references.

Why not full ``fhir.resources`` models for everything: validating a realistic prefetch (≈50
resources) with them costs ~20 ms on the target machine, three times the whole latency budget of
a hook call, while the rules read a dozen elements. These helpers read exactly those elements
from the JSON, accept the shapes real servers send (STU3 string statuses, partial dates,
``urn:uuid`` references) and return ``None`` rather than guessing when an element is absent or
malformed. Draft orders — the input the advice is about — are still validated with
``fhir.resources.R4B`` by the service before they get here.
"""

from __future__ import annotations

import itertools
import re
import weakref
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime, time
from typing import Any

from cds_engine.facts.model import Coding
from cds_engine.vocabulary import HISTORY_KIND, Vocabulary

__all__ = [
    "Deferred",
    "ResourceIndex",
    "SharedRecord",
    "as_list",
    "best_coding",
    "code_groups",
    "coded_groups",
    "coding_and_groups",
    "codings",
    "concept_groups",
    "concept_text",
    "group_by_type",
    "parse_date",
    "parse_datetime",
    "quantity",
    "resolve_in",
    "status_code",
    "to_date",
]

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
_RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def as_list(value: Any) -> list[Any]:
    """FHIR repeating elements: tolerate a single object where a list belongs (seen in real payloads)."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def codings(concept: Any) -> list[dict[str, Any]]:
    """The codings of a CodeableConcept (or of a bare Coding), skipping malformed entries."""
    if not isinstance(concept, dict):
        return []
    if "coding" not in concept:
        return [concept] if "code" in concept else []  # a bare Coding, or no coding at all
    found = concept["coding"]  # as_list(), inlined: every coded resource of a record comes here
    if isinstance(found, list):
        return [c for c in found if isinstance(c, dict)]
    return [found] if isinstance(found, dict) else []


def concept_text(concept: Any) -> str | None:
    if not isinstance(concept, dict):
        return None
    text = concept.get("text")
    if isinstance(text, str) and text.strip():
        return text
    for c in codings(concept):
        if isinstance(c.get("display"), str) and c["display"].strip():
            return str(c["display"])
    return None


def status_code(value: Any) -> str | None:
    """A status given as a code (R4 MedicationRequest), a CodeableConcept (R4 Condition) or text (STU3)."""
    if isinstance(value, str):
        return value.strip().lower() or None
    found = value.get("coding") if type(value) is dict else None
    if type(found) is list:  # codings(value), inlined for its usual shape (a coded status: ~60 a call)
        for c in found:
            if isinstance(c, dict) and isinstance(c.get("code"), str):
                return str(c["code"]).strip().lower()
        return None
    for c in codings(value):
        if isinstance(c.get("code"), str):
            return str(c["code"]).strip().lower()
    return None


def _coding(c: dict[str, Any], text: str | None) -> Coding:
    display = c.get("display") if isinstance(c.get("display"), str) else None
    return Coding(
        system=c.get("system") if isinstance(c.get("system"), str) else None,
        code=str(c["code"]) if c.get("code") is not None else None,
        display=display or text,
    )


class _Memo:
    """Classification results per vocabulary, so a code seen in many resources is classified once.

    The term fallback of :meth:`Vocabulary.classify` scans hundreds of patterns; a patient's record
    repeats the same codes over and over, and batch runs repeat them across patients. Entries are
    keyed by the vocabulary object and bounded in number. The vocabulary is held weakly (its id
    checked against the live object, so a reused id never returns another's table): a hot reload
    loads a new vocabulary with every pack, and a memo that held the old ones kept up to eight
    reloads' vocabularies and their tables alive.
    """

    max_entries = 200_000

    def __init__(self) -> None:
        self._tables: dict[int, tuple[weakref.ref[Vocabulary], dict[tuple[Any, ...], frozenset[str]]]] = {}
        self._last: tuple[weakref.ref[Vocabulary], dict[tuple[Any, ...], frozenset[str]]] | None = None

    def table(self, vocab: Vocabulary) -> dict[tuple[Any, ...], frozenset[str]]:
        last = self._last  # the vocabulary of the previous call: almost always this one
        if last is not None and last[0]() is vocab and len(last[1]) <= self.max_entries:
            return last[1]
        entry = self._tables.get(id(vocab))
        if entry is None or entry[0]() is not vocab:
            if len(self._tables) >= 8:
                self._tables.clear()
            entry = self._tables[id(vocab)] = (weakref.ref(vocab, self._forget(id(vocab))), {})
        if len(entry[1]) > self.max_entries:
            entry[1].clear()
        self._last = entry
        return entry[1]

    def _forget(self, key: int) -> Callable[[weakref.ref[Vocabulary]], None]:
        """The callback dropping a dead vocabulary's table (only its own: the id may be reused)."""

        def forget(ref: weakref.ref[Vocabulary]) -> None:
            held = self._tables.get(key)
            if held is not None and held[0] is ref:
                self._tables.pop(key, None)
            last = self._last
            if last is not None and last[0] is ref:
                self._last = None

        return forget


_MEMO = _Memo()


def _key(concept: dict[str, Any]) -> tuple[Any, ...]:
    # a list made into a tuple: cheaper than a generator for the one or two codings of a concept
    return (
        tuple([(c.get("system"), c.get("code"), c.get("display")) for c in codings(concept)]),
        concept.get("text"),
    )


def concept_groups(concept: Any, vocab: Vocabulary, kind: str) -> set[str]:
    """Every group of ``kind`` that any coding (or the text) of a concept belongs to."""
    if not isinstance(concept, dict):
        return set()
    return set(_concept_groups_keyed(_key(concept), concept, vocab, kind))


def _concept_groups_keyed(key: tuple[Any, ...], concept: dict[str, Any], vocab: Vocabulary,
                          kind: str) -> frozenset[str]:
    """:func:`concept_groups` of a concept whose :func:`_key` is ``key``, memoised."""
    table = _MEMO.table(vocab)
    cached = table.get((kind, *key))
    if cached is None:
        cached = table[(kind, *key)] = frozenset(_concept_groups(concept, vocab, kind))
    return cached


def _concept_groups(concept: dict[str, Any], vocab: Vocabulary, kind: str) -> set[str]:
    text = concept_text(concept)
    groups: set[str] = set()
    for c in codings(concept):
        coding = _coding(c, text)
        groups |= vocab.classify(coding, kind)
        product = vocab.product(coding) if kind == "drug_class" else None
        if product is not None:
            groups.add(product.ingredient_group)
    if not groups and text:
        groups |= vocab.classify(Coding(display=text), kind)
    return groups


def code_groups(system: Any, code: Any, vocab: Vocabulary, kind: str) -> frozenset[str]:
    """``vocab.classify(Coding(system=system, code=code), kind)`` for one coding's raw members, memoised.

    Why: every Observation of a record is classified by its code, and building a validated
    :class:`Coding` for each cost more than the classification (memoised already). Only string
    (or absent) members are looked up here; anything else goes through ``Coding`` and fails there
    exactly as before.
    """
    if not (system is None or type(system) is str) or not (code is None or type(code) is str):
        return frozenset(vocab.classify(Coding(system=system, code=code), kind))
    table = _MEMO.table(vocab)
    key = ("raw-code", kind, system, code)
    cached = table.get(key)
    if cached is None:
        cached = table[key] = frozenset(vocab.classify(Coding(system=system, code=code), kind))
    return cached


def coded_groups(concept: Any, vocab: Vocabulary, kind: str) -> tuple[set[str], bool]:
    """The groups of a concept's codes (True), else of its text (False), memoised per concept.

    The same as taking the union of :func:`code_groups` over its codings and, when that is
    empty, :func:`concept_groups`: both depend only on the codings' system, code and display and
    the text, which is the key. A concept the key cannot be made of takes that path itself (and
    fails where it fails).
    """
    try:
        key = ("coded", kind, *_key(concept))
        cached = _MEMO.table(vocab).get(key)
    except (AttributeError, TypeError):  # not a dict, or a member that cannot be a key
        return _coded_groups(concept, vocab, kind)
    if cached is None:
        groups, coded = _coded_groups(concept, vocab, kind)
        cached = _MEMO.table(vocab)[key] = (frozenset(groups), coded)
    return set(cached[0]), cached[1]


def _coded_groups(concept: Any, vocab: Vocabulary, kind: str) -> tuple[set[str], bool]:
    groups: set[str] = set()
    for c in codings(concept):
        groups |= code_groups(c.get("system"), c.get("code"), vocab, kind)
    if groups:
        return groups, True
    return concept_groups(concept, vocab, kind), False


def _code_groups(coding: Coding, vocab: Vocabulary, kind: str) -> frozenset[str]:
    table = _MEMO.table(vocab)
    key = ("code-only", kind, coding.system, coding.code)
    cached = table.get(key)
    if cached is None:
        cached = table[key] = frozenset(vocab.classify(Coding(system=coding.system, code=coding.code), kind))
    return cached


def best_coding(concept: Any, vocab: Vocabulary, kind: str) -> Coding | None:
    """The coding the engine should see: a known product, a classified code, an RxNorm code, or the first.

    Memoised per concept content (issue 19: every coded resource of a call comes here, and each
    time every coding became a validated :class:`Coding` and was classified, to keep one). The
    memo keeps the chosen coding's fields and builds a new :class:`Coding` from them on every call
    (callers put it into their own models). Only concepts whose codings and text are strings or
    absent are memoised — their key then fixes the answer (``1``, ``1.0`` and ``True`` are one key
    but three codes); any other concept takes the full path, as before.
    """
    key = _plain_key(concept)
    if key is None:
        return _best_coding(concept, vocab, kind)
    return _best_coding_keyed(key, concept, vocab, kind)


def coding_and_groups(concept: Any, vocab: Vocabulary, kind: str) -> tuple[Coding | None, set[str]]:
    """``(best_coding(concept, vocab, kind), concept_groups(concept, vocab, kind))``, the key made once.

    Conditions and medicines read both of every concept (issue 19: the key was most of a memo hit).
    """
    key = _plain_key(concept)
    if key is None:
        return best_coding(concept, vocab, kind), concept_groups(concept, vocab, kind)
    groups = _concept_groups_keyed(key, concept, vocab, kind)
    return _best_coding_keyed(key, concept, vocab, kind), set(groups)


def _best_coding_keyed(key: tuple[Any, ...], concept: Any, vocab: Vocabulary, kind: str) -> Coding | None:
    """:func:`best_coding` of a concept whose :func:`_plain_key` is ``key``."""
    table = _MEMO.table(vocab)
    key = ("best", kind, *key)
    fields = table.get(key, _NOT_SEEN)
    if fields is _NOT_SEEN:
        coding = _best_coding(concept, vocab, kind)
        table[key] = None if coding is None else (coding.system, coding.code, coding.display,  # type: ignore[assignment]
                                                  frozenset(coding.model_fields_set))
        return coding
    if fields is None:
        return None
    system, code, display, given = fields  # type: ignore[misc]
    if len(given) == 3:
        return Coding(system=system, code=code, display=display)
    return Coding(**{name: value for name, value in (("system", system), ("code", code), ("display", display))
                     if name in given})


def _plain_key(concept: Any) -> tuple[Any, ...] | None:
    """:func:`_key` of a dict concept whose codings' members and text are strings or absent, else None."""
    if type(concept) is not dict:
        return None
    text = concept.get("text")
    if text is not None and type(text) is not str:
        return None
    found = codings(concept)
    members = []
    for c in found:
        system, code, display = c.get("system"), c.get("code"), c.get("display")
        if (
            (system is not None and type(system) is not str)
            or (code is not None and type(code) is not str)
            or (display is not None and type(display) is not str)
        ):
            return None
        members.append((system, code, display))
    return (tuple(members), text)


def _best_coding(concept: Any, vocab: Vocabulary, kind: str) -> Coding | None:
    text = concept_text(concept)
    candidates = [_coding(c, text) for c in codings(concept)]
    if not candidates:
        return Coding(display=text) if text else None
    if kind == "drug_class":
        for coding in candidates:
            if vocab.product(coding) is not None:
                return coding
    for coding in candidates:
        if coding.code and _code_groups(coding, vocab, kind):
            return coding
    if kind == "condition_group":  # [local code, Z87.11]: the history code is the one with a meaning
        for coding in candidates:
            if coding.code and _code_groups(coding, vocab, HISTORY_KIND):
                return coding
    for coding in candidates:
        if coding.system == _RXNORM and kind == "drug_class":
            return coding
    return candidates[0]


_DAYS: dict[str, date | None] = {}  # parse_date of recent strings (dates are immutable)
_NOT_SEEN = object()


def parse_date(value: Any) -> date | None:
    """A FHIR date or dateTime as a date; partial dates (``2021``, ``2021-03``) read as their first day.

    Memoised per string (bounded), as :func:`parse_datetime` is: a record's resources repeat the
    same dates, and a hook call read ~90 of them (issue 19: a pattern match, and for a dateTime
    a second look-up and ``.date()``, each time).
    """
    if type(value) is not str:
        return _parse_date(value)
    day = _DAYS.get(value, _NOT_SEEN)
    if day is _NOT_SEEN:
        day = _parse_date(value)
        if len(value) <= _KEY_CHARS:  # see _KEY_CHARS
            if len(_DAYS) >= _MOMENTS_MAX:
                _DAYS.clear()
            _DAYS[value] = day
    return day  # type: ignore[return-value]


def _parse_date(value: Any) -> date | None:
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    match = _DATE.match(text)
    if match:
        year, month, day = match.groups()
        try:
            return date(int(year), int(month or 1), int(day or 1))
        except ValueError:
            return None
    moment = parse_datetime(text)
    return moment.date() if moment else None


_MOMENTS: dict[str, datetime | None] = {}  # parse_datetime of recent strings (datetimes are immutable)
_MOMENTS_MAX = 50_000
# Only texts up to this long are remembered (the longest FHIR instant with nanoseconds and an
# offset is 35 characters): the count bound alone let a client pin 50,000 texts of any length
# (a request body may be 10 MB) for the life of the process. Longer texts are parsed each time.
_KEY_CHARS = 64


def parse_datetime(value: Any) -> datetime | None:
    """A FHIR dateTime/instant as an aware datetime (UTC assumed when a time has no offset).

    Memoised per string (bounded): a record repeats the same instants in many resources, and
    parsing was a tenth of the mapping.
    """
    if type(value) is not str:
        return _parse_datetime(value)
    try:
        return _MOMENTS[value]
    except KeyError:
        pass
    moment = _parse_datetime(value)
    if len(value) <= _KEY_CHARS:  # see _KEY_CHARS
        if len(_MOMENTS) >= _MOMENTS_MAX:
            _MOMENTS.clear()
        _MOMENTS[value] = moment
    return moment


def _parse_datetime(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if _DATE.match(text):
        day = parse_date(text)
        return datetime.combine(day, time(), UTC) if day else None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def to_date(value: date | datetime | None) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    return value


def quantity(value: Any) -> tuple[float | None, str | None, str | None]:
    """(value, unit, comparator) of a Quantity; the unit prefers the human unit, then the UCUM code."""
    if not isinstance(value, dict):
        return None, None, None
    number = value.get("value")
    if isinstance(number, bool) or not isinstance(number, int | float):
        try:
            number = float(number) if number is not None else None
        except (TypeError, ValueError):
            number = None
    unit = value.get("unit") or value.get("code")
    comparator = value.get("comparator")
    return (
        float(number) if number is not None else None,
        str(unit) if unit else None,
        comparator if comparator in ("<", "<=", ">", ">=") else None,
    )


class Deferred:
    """A resource kept undecoded in a record's index: its type and id, and its JSON line.

    Why: most of a Bulk record's Observations are of codes no fact reads, and decoding them was a
    large share of screening an export (:func:`~cds_engine.sources.ndjson.read_partition` decides
    which: never one the mapping could count). Such a resource is left out of the record's list, so
    no reader walks it, but it keeps its place in the index — a reference (``reasonReference``,
    ``Observation/id``, a bare id) resolves to it as it would to the decoded resource, the first of
    a type and id still wins, and the index hands out the decoded resource (decoded once, on the
    first look-up), never this placeholder.
    """

    __slots__ = ("_decode", "_resource", "id", "raw", "resourceType")

    def __init__(self, rtype: Any, rid: Any, raw: bytes, decode: Callable[[bytes], Any]) -> None:
        self.resourceType = rtype
        self.id = rid
        self.raw = raw
        self._decode = decode
        self._resource: Any = None

    def get(self, name: str, default: Any = None) -> Any:
        """``resourceType`` and ``id``, the members the index reads (as ``dict.get`` would)."""
        if name == "resourceType":
            return self.resourceType
        if name == "id":
            return self.id
        return self.resource().get(name, default)

    def resource(self) -> Any:
        """The decoded resource (the same object on every call)."""
        if self._resource is None:
            self._resource = self._decode(self.raw)
        return self._resource


def _decoded(found: Any) -> Any:
    """A look-up's answer: a :class:`Deferred` resource decoded."""
    return found.resource() if type(found) is Deferred else found


class ResourceIndex:
    """Resolve references among the resources of one request: ``Type/id``, ``urn:uuid:…``, absolute URLs.

    ``base``: an index of resources every record of a batch shares (a Bulk export's ``Medication``
    file), built once and read, never written, by each record's index. Why: indexing them again for
    every patient cost as much as indexing the patient's own record once there are many. The index
    answers as one built from ``[*resources, *base's resources, *added ones]`` would (the first of a
    type and id wins); :meth:`add` writes only this index, so nothing a record adds (a contained
    resource, a draft) reaches the base or another record.
    """

    def __init__(self, resources: Iterable[dict[str, Any]], base: ResourceIndex | None = None) -> None:
        if base is not None and base._base is not None:
            raise ValueError("a base index has no base of its own")
        by_key: dict[str, dict[str, Any]] = {}
        by_id: dict[str, dict[str, Any]] = {}
        for resource in resources:  # add(), inlined: a record has hundreds of resources
            rtype, rid = resource.get("resourceType"), resource.get("id")
            if isinstance(rtype, str) and isinstance(rid, str):
                by_key.setdefault(f"{rtype}/{rid}", resource)
                by_id.setdefault(rid, resource)
        self._by_key = by_key
        self._by_id = by_id
        self._base = base
        self._first = len(by_key)  # keys indexed before the base's (the later ones were added after it)

    @classmethod
    def of_record(cls, resources: list[dict[str, Any]], drafts: list[dict[str, Any]]) -> ResourceIndex:
        """The index of ``[*resources, *drafts]``; a :class:`SharedRecord` reuses its shared part's index."""
        if not isinstance(resources, SharedRecord):
            return cls([*resources, *drafts])  # a plain list
        if not resources.intact():  # changed since it was made: as a plain list (deferred ones after it)
            return cls([*resources, *(d.resource() for d in resources.deferred), *drafts])
        index = cls(resources.in_order(), resources.shared_index)
        for draft in drafts:
            index.add(draft)
        return index

    def add(self, resource: dict[str, Any]) -> None:
        """One more resource, after every one indexed so far (the base's included)."""
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if isinstance(rtype, str) and isinstance(rid, str):
            key, base = f"{rtype}/{rid}", self._base
            if base is None or key not in base._by_key:
                self._by_key.setdefault(key, resource)
            if base is None or rid not in base._by_id:
                self._by_id.setdefault(rid, resource)

    def _key(self, key: str) -> dict[str, Any] | None:
        found = self._by_key.get(key)
        if found is None and self._base is not None:
            found = self._base._by_key.get(key)
        return found.resource() if type(found) is Deferred else found

    def _id(self, rid: str) -> dict[str, Any] | None:
        found = self._by_id.get(rid)
        if found is None and self._base is not None:
            found = self._base._by_id.get(rid)
        return found.resource() if type(found) is Deferred else found

    def resolve(self, reference: Any, container: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The resource a Reference points to, from ``contained``, this index, or None."""
        ref = reference.get("reference") if isinstance(reference, dict) else reference
        if not isinstance(ref, str) or not ref:
            return None
        if ref.startswith("#"):
            for item in as_list((container or {}).get("contained")):
                if isinstance(item, dict) and item.get("id") == ref[1:]:
                    return item
            return None
        if ref.startswith("urn:uuid:") or ref.startswith("urn:oid:"):
            return self._id(ref.rsplit(":", 1)[1])
        parts = ref.split("?", 1)[0].rstrip("/").split("/")
        if "_history" in parts:
            parts = parts[: parts.index("_history")]
        if len(parts) >= 2:
            return self._key(f"{parts[-2]}/{parts[-1]}")
        return self._id(ref)

    def of_type(self, rtype: str) -> Iterator[dict[str, Any]]:
        """The indexed resources of a type, in the order they were indexed (the base's after this
        index's own and before the ones added)."""
        prefix = rtype + "/"
        if self._base is None:
            return (_decoded(r) for k, r in self._by_key.items() if k.startswith(prefix))
        mine = list(self._by_key.items())
        shared = ((k, r) for k, r in self._base._by_key.items() if k not in self._by_key)
        ordered = itertools.chain(mine[: self._first], shared, mine[self._first :])
        return (_decoded(r) for k, r in ordered if k.startswith(prefix))

    def __contains__(self, key: str) -> bool:
        return key in self._by_key or (self._base is not None and key in self._base)


class _Scan(ResourceIndex):
    """:class:`ResourceIndex`'s answers for a lookup or two, by scanning the resources instead.

    Why: a request's medication was resolved by building the index of the whole record for each
    request (:func:`resolve_in`); building it cost several dict writes and a string per resource,
    a scan a few reads, and the look-up stops at the first match — which is the one the index keeps
    (the first of a type and id). Only a list of plain dicts is scanned (:func:`resolve_in` builds
    the index for anything else, which fails where it failed). A :class:`SharedRecord`'s shared part
    is looked up in its index, after its own resources, as :meth:`ResourceIndex.of_record` does.
    """

    def __init__(self, resources: list[dict[str, Any]]) -> None:  # no super(): nothing is indexed
        self._resources: list[Any] = resources
        self._base: ResourceIndex | None = None
        if isinstance(resources, SharedRecord):
            if resources.intact():
                self._resources, self._base = resources.in_order(), resources.shared_index
            elif resources.deferred:  # changed since it was made: as ResourceIndex.of_record reads it
                self._resources = [*resources, *(d.resource() for d in resources.deferred)]

    def _key(self, key: str) -> dict[str, Any] | None:
        rtype, _, rid = key.partition("/")  # "type/id" of two parts without "/" (resolve() makes it)
        for resource in self._resources:
            if resource.get("id") == rid and resource.get("resourceType") == rtype:
                return _decoded(resource)
        return self._base._key(key) if self._base is not None else None

    def _id(self, rid: str) -> dict[str, Any] | None:
        for resource in self._resources:
            if resource.get("id") == rid and isinstance(resource.get("resourceType"), str):
                return _decoded(resource)
        return self._base._id(rid) if self._base is not None else None


def resolve_in(
    resources: list[dict[str, Any]], reference: Any, container: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """``ResourceIndex(resources).resolve(reference, container)`` without building the index (see
    :class:`_Scan`): for one look-up in a record that is not indexed already."""
    if not set(map(type, resources)) <= {dict}:  # a member of another kind: the index, as before
        return ResourceIndex(resources).resolve(reference, container)
    return _Scan(resources).resolve(reference, container)


class SharedRecord(list[dict[str, Any]]):
    """One record's resources followed by the resources every record of its batch shares, with the
    index of those shared ones (:meth:`ResourceIndex.of_record` reuses it). It is the plain list
    ``[*own, *shared]`` to every other reader.

    ``order``: the record's own resources and its :class:`Deferred` ones, in the order they were
    read (None: no deferred ones, ``own`` is that order) — what the record's index and reference
    scans walk, so a deferred resource resolves exactly where the decoded one would have.
    """

    def __init__(
        self,
        own: list[dict[str, Any]],
        shared: list[dict[str, Any]],
        index: ResourceIndex,
        by_type: dict[str, list[dict[str, Any]]] | None = None,
        order: list[Any] | None = None,
    ) -> None:
        super().__init__(own)
        self.order = order
        self.deferred: list[Deferred] = [r for r in order if type(r) is Deferred] if order else []
        self.extend(shared)
        self.own = len(own)
        self.shared = len(shared)
        self.shared_index = index
        # the shared resources grouped by type (:func:`group_by_type`), made once per partition and passed
        # to each record; read, never written, by the mapping
        self.shared_by_type = by_type if by_type is not None else group_by_type(shared)

    def intact(self) -> bool:
        """Whether it is still ``[*own, *shared]`` as made (a reader that changed it gets no shortcut)."""
        return len(self) == self.own + self.shared

    def in_order(self) -> list[Any]:
        """The own resources with the deferred ones in their places (see ``order``)."""
        return self.order if self.order is not None else self[: self.own]


def group_by_type(resources: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The resources of each ``resourceType`` (a string), in their order; types in order of first sight."""
    out: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        if isinstance(rtype, str):
            found = out.get(rtype)
            if found is None:
                out[rtype] = [resource]
            else:
                found.append(resource)
    return out
