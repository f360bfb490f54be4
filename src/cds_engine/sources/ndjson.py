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
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec

from cds_engine.sources.compressed import capped_lines, open_text
from cds_engine.sources.selective import READ_TYPES, decode_resource, line_head

__all__ = ["NdjsonError", "PartitionResult", "partition_export", "read_partition"]

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
_PREFIX = msgspec.json.Encoder()  # [file, line, type, patient] before each partition line


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


def _open(path: Path) -> IO[str]:
    """Decompressed as it is read, with a 100:1 ratio check (:mod:`cds_engine.sources.compressed`)."""
    return open_text(path)


def patient_key(resource: dict[str, Any]) -> str | None:
    """The patient a resource belongs to: its own id for a Patient, else its subject/patient reference."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return str(rid) if rid else None
    for name in _PATIENT_FIELDS:
        ref = resource.get(name)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            text = ref["reference"]
            if text.startswith("urn:uuid:"):
                return text[len("urn:uuid:") :]
            if "Patient/" in text:
                return text.rsplit("Patient/", 1)[1].split("/")[0]
    return None


def partition_export(files: list[Path], workdir: Path, parts: int) -> PartitionResult:
    """Spread the lines of an export over ``parts`` files by patient (stable crc32 of the patient id)."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = [workdir / f"part-{i:04d}.ndjson" for i in range(parts)]
    handles = [p.open("w", encoding="utf-8") for p in paths]
    shared_path = workdir / "shared.ndjson"
    shared = shared_path.open("w", encoding="utf-8")
    result = PartitionResult(parts=paths, shared=shared_path)
    try:
        for f in sorted(files):
            try:
                fh = _open(f)
                for n, line in enumerate(capped_lines(fh), start=1):  # no total cap: exports are large
                    if line is None:
                        result.errors.append(NdjsonError(str(f), n, "line too long: skipped"))
                        continue
                    _route(f, n, line, handles, shared, result)
                fh.close()
            except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
                result.errors.append(NdjsonError(str(f), 0, f"file cannot be read to the end: {exc}"))
    finally:
        for h in handles:
            h.close()
        shared.close()
    return result


def _route(
    f: Path, n: int, line: str, handles: list[IO[str]], shared: IO[str], result: PartitionResult
) -> None:
    text = line.strip()
    if n == 1:
        text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark before the first line
    if not text:
        return
    head = line_head(text)
    if head is not None:
        resource = head.as_dict()  # type, id and patient references: all that routing reads
    else:
        try:
            resource = json.loads(text)
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
        shared.write(text + "\n")
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
    body = text if rtype in READ_TYPES else ""  # a type nobody reads: where it belongs, not what it says
    try:
        where = _PREFIX.encode([str(f), n, rtype, key]).decode()
    except (msgspec.EncodeError, UnicodeEncodeError):  # a file name that is not valid Unicode
        where = json.dumps([str(f), n, rtype, key])
    handles[zlib.crc32(key.encode()) % len(handles)].write(f"{where}\t{body}\n")


def read_partition(part: Path, shared: Path | None) -> Iterator[tuple[str, str, int, list[dict[str, Any]]]]:
    """(patient id, file, line of its Patient record, resources incl. shared ones) for each patient.

    A group without a Patient record is yielded with line -1: the caller rejects it.
    """
    shared_resources: list[dict[str, Any]] = []
    if shared is not None and shared.exists():
        with shared.open(encoding="utf-8") as fh:
            shared_resources = [decode_resource(line) for line in fh if line.strip()]
    groups: dict[str, list[dict[str, Any]]] = {}
    origin: dict[str, tuple[str, int]] = {}
    with part.open(encoding="utf-8") as fh:
        for line in fh:
            where, _, text = line.partition("\t")
            file, n, *routed = decode_resource(where)
            if routed:  # [type, patient]; the resource only for the types the mapping reads
                rtype, key = routed
                members = groups.setdefault(key, [])
                if text.strip():
                    members.append(decode_resource(text))
            else:  # a partition written before selective decoding (a resumed run)
                resource = json.loads(text)
                rtype, key = resource.get("resourceType"), patient_key(resource) or ""
                groups.setdefault(key, []).append(resource)
            if rtype == "Patient" and key not in origin:
                origin[key] = (file, n)
            elif key not in origin:
                origin.setdefault("?" + key, (file, n))
    for key, resources in groups.items():
        if key in origin:
            file, n = origin[key]
            yield key, file, n, resources + shared_resources
        else:
            file, n = origin.get("?" + key, (str(part), 0))
            yield key, file, -1, resources
