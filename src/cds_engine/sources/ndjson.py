"""Bulk FHIR NDJSON exports → one resource list per patient, with flat memory.

A Bulk export is one file per resource type (``Patient.ndjson``, ``Observation.ndjson`` …),
each holding every patient's resources. Grouping them by patient in memory would grow with
the export, so the export is first *partitioned*: each line goes, unchanged, to one of N
spill files chosen by a stable hash of its patient. A partition then holds whole patients
and is processed like a chunk of bundles. Shared resources without a patient (``Medication``,
referenced by ``medicationReference``) are copied to a side file every partition reads.

What cannot be read is reported per line, never silently dropped: a line that is not JSON, a
patient-compartment resource that names no patient, and resources whose patient has no
``Patient`` record.

Routing reads only each line's type, id and patient references
(:func:`~cds_engine.sources.selective.line_head`: the rest of the line is skipped by msgspec, not
built); a line the fast path cannot vouch for is parsed in full with ``json.loads``, as before. A
partition line carries its file, line number, type and patient; the resource itself only for the
types the mapping reads (:data:`~cds_engine.sources.selective.READ_TYPES`) — the others stay as a
marker, so a patient with only such records and no ``Patient`` is still rejected.

Observations are most of an export and most name codes no fact reads: with an
:class:`ObservationFilter` (the vocabularies of the packs that run), :func:`read_partition` leaves
those the mapping would pass over undecoded (:class:`~cds_engine.sources.fhir_read.Deferred`: out
of the record's list, in its index at their place), decoded only if a reference resolves to one.

Lines are read as bytes from 1 MiB blocks (:func:`~cds_engine.sources.compressed.byte_lines`: the
same lines, errors and caps as the text stream it replaced) and partitions are written and read as
bytes: nothing is decoded to ``str`` that msgspec can read from bytes.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec

from cds_engine.sources.compressed import byte_lines
from cds_engine.sources.fhir import FINAL_OBSERVATION_STATUSES
from cds_engine.sources.fhir_read import (
    Deferred,
    ResourceIndex,
    SharedRecord,
    coded_groups,
    concept_groups,
    group_by_type,
    status_code,
)
from cds_engine.sources.selective import (
    LINE_HEAD,
    READ_TYPES,
    LineHead,
    collector_paused,
    decode_resource,
    line_head,
)
from cds_engine.vocabulary import Vocabulary

__all__ = ["NdjsonError", "ObservationFilter", "PartitionResult", "partition_export", "read_partition"]

# resources that belong to no patient and that patient resources may reference
SHARED_TYPES = frozenset({"Medication"})
# resources that belong to no patient and are not needed for screening
IGNORED_TYPES = frozenset(
    {
        "Organization",
        "Practitioner",
        "PractitionerRole",
        "Location",
        "Device",
        "Substance",
        "HealthcareService",
        "Endpoint",
        "Group",
        "ValueSet",
        "CodeSystem",
        "Bundle",
    }
)
_PATIENT_FIELDS = ("subject", "patient", "beneficiary", "individual")
_PREFIX = msgspec.json.Encoder()  # the JSON strings of [file, line, type, patient] before each line
_WHERE = msgspec.json.Decoder()  # that prefix, read back
_BOM = b"\xef\xbb\xbf"
# bytes that str.strip() removes at the ends of a line and bytes.strip() does not (other Unicode spaces)
_ODD_EDGE = frozenset(range(0x1C, 0x20)) | frozenset(range(0x80, 0x100))


@dataclass(frozen=True)
class NdjsonError:
    file: str
    line: int
    reason: str
    patient_id: str | None = None


@dataclass
class PartitionResult:
    parts: list[Path]
    shared: Path | None
    errors: list[NdjsonError] = field(default_factory=list)
    patients: int = 0  # Patient records seen (for progress)


def patient_key(resource: dict[str, Any]) -> str | None:
    """The patient a resource belongs to: its own id for a Patient, else its subject/patient reference."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return str(rid) if rid else None
    for name in _PATIENT_FIELDS:
        key = _reference_key(resource.get(name))
        if key is not None:
            return key
    return None


def _reference_key(ref: Any) -> str | None:
    """The patient id in one reference member (``{"reference": "Patient/…"}`` or a ``urn:uuid:``)."""
    if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
        text = ref["reference"]
        if text.startswith("urn:uuid:"):
            return text[len("urn:uuid:") :]
        if "Patient/" in text:
            return text.rsplit("Patient/", 1)[1].split("/")[0]
    return None


def _head_key(head: LineHead) -> str | None:
    """:func:`patient_key` of a routing head, read from its members without building a dict."""
    if head.resourceType == "Patient":
        return str(head.id) if head.id else None
    for ref in (head.subject, head.patient, head.beneficiary, head.individual):  # _PATIENT_FIELDS' order
        if ref is not None:
            text = ref.reference
            if isinstance(text, str):
                if text.startswith("urn:uuid:"):
                    return text[9:]
                if "Patient/" in text:
                    return text.rsplit("Patient/", 1)[1].split("/")[0]
    return None


class _Spill:
    """The partition files being written, and the patients that already have a marker line.

    Why markers are written once per patient: a line of a type the mapping does not read carries
    only where it belongs, and :func:`read_partition` uses that only to know the patient exists
    (a patient with such records and no ``Patient`` is rejected) and where it was first seen — the
    first marker says both; the next ones said nothing new and were a third of the lines.
    Lines are gathered per file and written in batches (one ``write`` per line cost as much as the
    routing).
    """

    FLUSH = 512  # lines gathered per partition file before one write
    REMEMBER = 200_000  # patients (and JSON names) remembered at most

    def __init__(self, paths: list[Path]) -> None:
        self.handles = [p.open("wb") for p in paths]
        self.pending: list[list[bytes]] = [[] for _ in paths]
        self.marked: set[str] = set()
        self._json: dict[str, bytes] = {}  # JSON of the file names, types and patient ids seen
        self._patients: dict[str, tuple[int, bytes]] = {}  # partition and JSON of the patients seen

    def mark(self, key: str) -> None:
        """Remember that ``key`` has its marker; forgotten past a bound (memory stays flat), which
        only means a later marker of the same patient is written again — harmless, as before."""
        if len(self.marked) >= self.REMEMBER:
            self.marked.clear()
        self.marked.add(key)

    def json(self, text: str) -> bytes:
        """``text`` as a JSON string, remembered (the same few names and ids prefix every line)."""
        out = self._json.get(text)
        if out is None:
            try:
                out = _PREFIX.encode(text)
            except (msgspec.EncodeError, UnicodeEncodeError):  # a lone surrogate: escaped by json
                out = json.dumps(text).encode()
            if len(self._json) >= self.REMEMBER:
                self._json.clear()
            self._json[text] = out
        return out

    def add(self, key: str, where: bytes, body: bytes) -> None:
        """One partition line, ``[file, line, type, patient]\\t{resource}`` (``where`` is its start)."""
        known = self._patients.get(key)
        if known is None:
            # surrogatepass: an id decoded from a "\\ud800" escape has no UTF-8 form (it stopped the run)
            i = zlib.crc32(key.encode("utf-8", "surrogatepass")) % len(self.handles)
            known = (i, self.json(key) + b"]\t")
            if len(self._patients) >= self.REMEMBER:
                self._patients.clear()
            self._patients[key] = known
        i, tail = known
        batch = self.pending[i]
        batch += (where, tail, body, b"\n")  # joined once, when written
        if len(batch) >= 4 * self.FLUSH:
            self.handles[i].write(b"".join(batch))
            batch.clear()

    def close(self) -> None:
        try:
            for handle, batch in zip(self.handles, self.pending, strict=True):
                if batch:
                    handle.write(b"".join(batch))
                    batch.clear()
        finally:
            for handle in self.handles:
                handle.close()


def partition_export(files: list[Path], workdir: Path, parts: int) -> PartitionResult:
    """Spread the lines of an export over ``parts`` files by patient (stable crc32 of the patient id)."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = [workdir / f"part-{i:04d}.ndjson" for i in range(parts)]
    shared_path = workdir / "shared.ndjson"
    result = PartitionResult(parts=paths, shared=shared_path)
    spill = _Spill(paths)
    try:
        with shared_path.open("wb") as shared:
            for f in sorted(files):
                try:
                    _route_file(f, spill, shared, result)
                except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
                    result.errors.append(NdjsonError(str(f), 0, f"file cannot be read to the end: {exc}"))
    finally:
        spill.close()
    return result


def _route_file(f: Path, spill: _Spill, shared: IO[bytes], result: PartitionResult) -> None:
    """Every line of one export file, routed as :func:`_route` routes it.

    Why a loop of its own: the lines of an export are nearly all one shape (an object that starts
    and ends the line, its head read by msgspec, a type that is read or ignored, a patient named by
    ``subject`` or ``patient``), and calling :func:`_route` per line (a frame, the head's wrapper,
    :func:`_head_key`, :meth:`_Spill.add`) cost more than msgspec's read of the head. That shape is
    routed here inline; any other line (the first one, a line to strip, one msgspec refuses, a
    shared resource, a head without a patient) goes to :func:`_route`, which decides it as before.
    """
    name = spill.json(str(f))
    decode = LINE_HEAD.decode
    refused = (msgspec.DecodeError, msgspec.ValidationError)
    ignored, read_types, marked = IGNORED_TYPES, READ_TYPES, spill.marked
    patients, pending, handles = spill._patients, spill.pending, spill.handles
    flush = 4 * spill.FLUSH
    types: dict[str, bytes] = {}  # each type's JSON, as spill.json gives it
    errors = result.errors
    for n, line in enumerate(byte_lines(f), start=1):  # no total cap: exports are large
        if line is None:
            errors.append(NdjsonError(str(f), n, "line too long: skipped"))
            continue
        if line[:1] != b"{" or line[-1:] != b"}" or n == 1:
            _route(f, name, n, line, spill, shared, result)
            continue
        try:
            head = decode(line)
        except refused:
            _route(f, name, n, line, spill, shared, result)  # parsed in full there, or reported
            continue
        rtype = head.resourceType
        if type(rtype) is not str or rtype in SHARED_TYPES:
            _route(f, name, n, line, spill, shared, result)
            continue
        if rtype in ignored:
            continue
        # _head_key, inline
        key = None
        if rtype == "Patient":
            key = str(head.id) if head.id else None
        else:
            for ref in (head.subject, head.patient, head.beneficiary, head.individual):
                if ref is not None:
                    text = ref.reference
                    if isinstance(text, str):
                        if text.startswith("urn:uuid:"):
                            key = text[9:]
                            break
                        if "Patient/" in text:
                            key = text.rsplit("Patient/", 1)[1].split("/")[0]
                            break
        if key is None:
            _route(f, name, n, line, spill, shared, result)  # reported there
            continue
        if rtype in read_types:
            body = line
            if rtype == "Patient":
                result.patients += 1
        elif key in marked:
            continue  # a type nobody reads, of a patient already marked (see _Spill)
        else:
            spill.mark(key)
            body = b""
        tjson = types.get(rtype)
        if tjson is None:
            tjson = types[rtype] = spill.json(rtype)
        # _Spill.add, inline
        known = patients.get(key)
        if known is None:
            spill.add(key, b"[%b,%d,%b," % (name, n, tjson), body)
            continue
        i, tail = known
        batch = pending[i]
        batch += (b"[%b,%d,%b," % (name, n, tjson), tail, body, b"\n")
        if len(batch) >= flush:
            handles[i].write(b"".join(batch))
            batch.clear()


def _strip(line: bytes, first: bool) -> bytes:
    """``line`` without the whitespace ``str.strip()`` removes (and the first line's byte-order mark)."""
    text = line.strip()
    if text and (text[0] in _ODD_EDGE or text[-1] in _ODD_EDGE):  # maybe a Unicode space: as str
        text = line.decode("utf-8").strip().encode("utf-8")
    if first and text.startswith(_BOM):
        text = text[len(_BOM) :]  # as before: the mark went after strip(), nothing stripped again
    return text


def _route(
    f: Path, name: bytes, n: int, line: bytes, spill: _Spill, shared: IO[bytes], result: PartitionResult
) -> None:
    if line[:1] == b"{" and line[-1:] == b"}" and n > 1:
        text = line  # the common case: nothing to strip
    else:
        text = _strip(line, n == 1)
        if not text:
            return
    head = line_head(text)
    if head is not None:  # type, id and patient references: all that routing reads
        rtype: Any = head.resourceType
        if not isinstance(rtype, str):
            result.errors.append(NdjsonError(str(f), n, "line is not a FHIR resource (no resourceType)"))
            return
        if rtype in SHARED_TYPES:
            shared.write(text + b"\n")
            return
        if rtype in IGNORED_TYPES:
            return
        key = _head_key(head)
    else:
        try:
            resource = json.loads(text.decode("utf-8"))  # as text, as it was read before
        except ValueError as exc:
            result.errors.append(
                NdjsonError(str(f), n, f"line is not JSON: {exc.__class__.__name__}: {exc}"[:200])
            )
            return
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            result.errors.append(NdjsonError(str(f), n, "line is not a FHIR resource (no resourceType)"))
            return
        rtype = resource["resourceType"]
        if rtype in SHARED_TYPES:
            shared.write(text + b"\n")
            return
        if rtype in IGNORED_TYPES:
            return
        key = patient_key(resource)
    if key is None:
        result.errors.append(
            NdjsonError(str(f), n, f"{rtype} names no patient (no subject/patient reference)")
        )
        return
    if rtype == "Patient":
        result.patients += 1
    if rtype in READ_TYPES:
        body = text
    elif key in spill.marked:
        return  # a type nobody reads, of a patient already marked: nothing new (see _Spill)
    else:
        spill.mark(key)
        body = b""  # a type nobody reads: where it belongs, not what it says
    spill.add(key, b"[%b,%d,%b," % (name, n, spill.json(rtype)), body)


class _ObservationHead(msgspec.Struct):
    """What decides whether the mapping can count an Observation (status, code), and what its index
    entry needs (type, id); every other member is skipped, not built. ``code`` stays raw bytes: the
    decision is remembered per distinct code."""

    resourceType: Any = None
    id: Any = None
    status: Any = None
    code: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


_OBSERVATION_HEAD = msgspec.json.Decoder(_ObservationHead)


# What the mapping (sources/fhir.py) needs of a resource before it reads anything else of it, for the
# types whose lines can stay undecoded: the statuses it counts, and the kind of group its code
# must have. ``_Mapper._observations`` counts an Observation of a final status whose code (else
# text) is in an ``observation`` group; ``_Mapper._last_procedure`` a Procedure, completed or in
# progress, whose code is in the ``condition_group`` it asks for (any group: kept).
_DEFERRABLE: dict[str, tuple[frozenset[str], str]] = {
    "Observation": (FINAL_OBSERVATION_STATUSES, "observation"),
    "Procedure": (frozenset({"completed", "in-progress"}), "condition_group"),
}


class ObservationFilter:
    """Which Observation (and Procedure) lines can stay undecoded: those no pack's mapping would count.

    The mapping (``sources/fhir.py``, ``_Mapper._observations``) passes over an Observation whose
    status is not final/amended/corrected, or whose code (else text) is in no ``observation`` group
    of the pack's vocabulary — before it reads anything else of it. Those two members are read here
    the same way (:func:`~cds_engine.sources.fhir_read.status_code`,
    :func:`~cds_engine.sources.fhir_read.coded_groups`) for every vocabulary given; a line is kept
    for a full decode whenever any of them could count it, whenever classifying its code raises
    (the mapping decides what that means), and whenever the fast read cannot vouch for the line
    (not UTF-8, a member msgspec refuses): a line the catalog reads is never skipped.
    ``tests/test_ndjson_deferred.py`` holds this to the full parse.

    Procedures the same way (``_Mapper._last_procedure``, their only reader): one that is not
    completed or in progress, or whose code is in no ``condition_group`` of any vocabulary
    (:func:`~cds_engine.sources.fhir_read.concept_groups`), is passed over — most of an export's
    procedures (``tests/test_ndjson_procedures_routing.py``).
    """

    MEMO = 100_000  # distinct codes remembered at most

    def __init__(self, vocabularies: Iterable[Vocabulary]) -> None:
        self.vocabularies = tuple(vocabularies)
        self._needed: dict[tuple[str, bytes], bool] = {}  # (type, raw code) -> whether some vocabulary counts

    def defer(self, text: bytes) -> Deferred | None:
        """A placeholder for an Observation line the mapping would pass over, else None (decode it)."""
        return self._defer(text, "Observation")

    def defer_procedure(self, text: bytes) -> Deferred | None:
        """A placeholder for a Procedure line the mapping would pass over, else None (decode it)."""
        return self._defer(text, "Procedure")

    def _defer(self, text: bytes, rtype: str) -> Deferred | None:
        rule = _DEFERRABLE[rtype]
        try:
            head = _OBSERVATION_HEAD.decode(text)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        if not text.isascii():
            try:  # msgspec does not check the UTF-8 of what it skips; the full decode does
                text.decode("utf-8")
            except UnicodeDecodeError:
                return None
        statuses, kind = rule
        if status_code(head.status) in statuses:
            code = (rtype, bytes(head.code))
            needed = self._needed.get(code)
            if needed is None:
                needed = self._could_count(code[1], kind)
                if len(self._needed) >= self.MEMO:
                    self._needed.clear()
                self._needed[code] = needed
            if needed:
                return None
        return Deferred(head.resourceType, head.id, text, decode_resource)

    def _could_count(self, code: bytes, kind: str = "observation") -> bool:
        try:
            concept = decode_resource(code) if code else None
        except ValueError:
            return True
        for vocab in self.vocabularies:
            try:
                if kind == "observation":
                    groups, _coded = coded_groups(concept, vocab, kind)
                else:
                    groups = concept_groups(concept, vocab, kind)
            except Exception:  # the mapping meets the same error: it decides, not the filter
                return True
            if groups:
                return True
        return False


def read_partition(
    part: Path, shared: Path | None, observations: ObservationFilter | None = None
) -> Iterator[tuple[str, str, int, list[dict[str, Any]]]]:
    """(patient id, file, line of its Patient record, resources incl. shared ones) for each patient.

    A group without a Patient record is yielded with line -1: the caller rejects it.

    Why the lines are grouped as text and decoded only when their patient is yielded: a partition
    decoded up front held every patient's resources as live dicts and lists at once, and the
    cyclic garbage collector scanned that heap over and over while it grew (half the time of
    reading a partition). Strings are not tracked by the collector; one patient's dicts at a time
    are cheap, and the memory held is the partition's text, not its objects.

    Why the shared resources are kept once per distinct line: every patient of the partition gets
    them all, and the mapping indexes each one for each patient (a fifth of its time with an export
    whose ``Medication`` file repeats 6 resources 40 times). A repeated line is the same resource
    again: the index keeps the first of a type and id anyway, and no reader lists shared resources.
    They are indexed once per partition, too: a patient's record is a
    :class:`~cds_engine.sources.fhir_read.SharedRecord` whose index the mapping reuses (the
    patient's own resources and drafts are indexed per patient, on top of it, never into it).

    ``observations``: the Observation lines it lets stay undecoded are left out of the record's
    list and kept, in their place, in its ``order`` (see :class:`ObservationFilter`); a record
    without a Patient gets every line decoded, as before.
    """
    shared_resources: list[dict[str, Any]] = []
    if shared is not None and shared.exists():
        with shared.open("rb") as fh:  # each distinct line once (see above)
            distinct = dict.fromkeys(line for line in fh if line.strip())
        shared_resources = [decode_resource(line) for line in distinct]
    shared_index = ResourceIndex(shared_resources)  # once per partition, not once per patient
    shared_groups = group_by_type(shared_resources)  # the mapping's by-type lists of them, once too
    groups: dict[str, list[Any]] = {}  # the lines (bytes) of each patient; a dict for a resumed run's line
    origin: dict[str, tuple[str, int]] = {}
    asked: set[str] = set()  # the keys with a "?" entry in origin (set once, as setdefault did)
    with part.open("rb") as fh:
        for line in fh:
            where, _, text = line.partition(b"\t")
            try:  # decode_resource, inline (it falls back to json.loads the same way)
                routed = _WHERE.decode(where)
            except (msgspec.DecodeError, UnicodeDecodeError):
                routed = decode_resource(where)
            if len(routed) == 4:  # [file, line, type, patient]: the resource only for the types read
                file, n, rtype, key = routed
                members = groups.setdefault(key, [])
                if text and not text.isspace():
                    deferred = None
                    if observations is not None:
                        if rtype == "Observation":
                            deferred = observations.defer(text)
                        elif rtype == "Procedure":
                            deferred = observations.defer_procedure(text)
                    members.append(text if deferred is None else deferred)
            else:  # a partition written before selective decoding (a resumed run): [file, line]
                file, n, *more = routed
                if more:
                    rtype, key = more  # raises, as it did, for a prefix of another length
                else:
                    resource = json.loads(text)
                    rtype, key = resource.get("resourceType"), patient_key(resource) or ""
                    groups.setdefault(key, []).append(resource)
            if key not in origin:
                if rtype == "Patient":
                    origin[key] = (file, n)
                elif key not in asked:
                    asked.add(key)
                    origin.setdefault("?" + key, (file, n))
    for key, lines in groups.items():
        with collector_paused():
            resources = [decode_resource(x) if type(x) is bytes else x for x in lines]
        order: list[Any] | None = None
        if observations is not None and any(type(x) is Deferred for x in resources):
            order = resources
            resources = [x for x in order if type(x) is not Deferred]
        if key in origin:
            file, n = origin[key]
            yield key, file, n, SharedRecord(resources, shared_resources, shared_index, shared_groups, order)
        else:
            file, n = origin.get("?" + key, (str(part), 0))
            yield key, file, -1, [x.resource() if type(x) is Deferred else x for x in order or resources]
