"""Selective decoding of FHIR Bundles and Bulk NDJSON lines: build Python objects only for what is read.

Why: a Synthea bundle is mostly claims, explanations of benefit, organisations and locations —
resources the fact mapping (:mod:`cds_engine.sources.fhir`) never looks at. ``json.loads`` builds
every one of them as dicts and strings, and the screening spent more time building them than the
whole of ``json.loads`` costs. Here the bundle is scanned by msgspec (C): each entry's resource is
kept as raw bytes, its top-level ``resourceType`` is read without decoding the rest (wherever the
key sits in the object; a ``resourceType`` nested in ``contained`` or in an extension is not the
entry's), and only the types in :data:`READ_TYPES` are decoded into dicts.

Fail-safe, never silent:

* anything the fast path does not understand — not UTF-8 (a UTF-16 file), ``NaN``, numbers out of
  range, lone surrogates, a top level that is not a Bundle, an ``entry`` of an odd shape — falls back
  to the full ``json.loads`` parse of the whole file, so the result (or the error message) is exactly
  what the full parse gives;
* an entry whose ``resourceType`` cannot be read (missing, not a string, malformed inside) is decoded
  in full and kept, as the full parse would keep it — never dropped;
* every entry left undecoded is counted by type in :attr:`BundleRead.types`, so "a bundle with
  clinical resources but no Patient" is still recognised from the types alone.

The parity of the two paths (same facts, same alerts) is tested on the shipped examples, on
generated bundles and on odd inputs (``tests/test_sources_selective.py``).
"""

from __future__ import annotations

import gc
import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec

from cds_engine.sources.fhir import bundle_resources

__all__ = [
    "LINE_HEAD",
    "READ_TYPES",
    "BundleRead",
    "LineHead",
    "LineRef",
    "collector_paused",
    "decode_resource", "line_head", "read_bundle"]

# The resource types the FHIR mapping reads (sources/fhir.py, fhir_meds.py, gestation.py) and that the
# batch reader looks at (Patient). A test reads the sources for `by_type.get("X")` / resourceType
# comparisons so this list cannot fall behind the mapping.
READ_TYPES = frozenset(
    {
        "Patient",
        "Condition",
        "Observation",
        "MedicationRequest",
        "MedicationStatement",
        "MedicationAdministration",
        "Medication",
        "Encounter",
        "AllergyIntolerance",
        "Procedure",
    }
)
_BOM = b"\xef\xbb\xbf"
_STRUCTURAL = frozenset({"Bundle", "OperationOutcome"})  # walked into / dropped by type: never skipped blind
_FIRST_KEY = re.compile(rb'\{\s*"resourceType"\s*:\s*"([A-Za-z]{1,64})"')


class _Head(msgspec.Struct):
    """The top-level ``resourceType`` of one resource; every other member is skipped, not built."""

    resourceType: Any = None


class _Entry(msgspec.Struct):
    resource: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    search: Any = None


class _Bundle(msgspec.Struct):
    resourceType: Any = None
    entry: list[_Entry] | _Entry | None = None


_HEAD = msgspec.json.Decoder(_Head)
_BUNDLE = msgspec.json.Decoder(_Bundle)
_ANY = msgspec.json.Decoder()


class _FullParse(Exception):
    """The fast path cannot vouch for this input: use the full parse."""


@dataclass
class BundleRead:
    """What a bundle holds, as the mapping needs it.

    ``root`` is the top-level ``resourceType`` (or the Python type name of a top level that is not
    an object); ``resources`` what :func:`~cds_engine.sources.fhir.bundle_resources` would return,
    less the entries of types nobody reads; ``types`` counts every entry's type, decoded or not.
    """

    root: Any
    resources: list[dict[str, Any]] = field(default_factory=list)
    types: Counter[str] = field(default_factory=Counter)
    skipped: int = 0  # entries left as raw bytes
    full_parse: str | None = None  # why the whole file was parsed in full (None: selective)


_pause_lock = threading.Lock()
_pauses = 0  # nested or concurrent pauses in progress (only the outermost toggles the collector)
_resumes = False  # whether the outermost pause found the collector enabled


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while JSON is decoded into dicts and lists (and mapped to facts).

    Why: decoded JSON cannot hold reference cycles, yet every few hundred containers built set
    off a collection that walks them, and the survivors are walked again by the older
    generations — measured at half the time of reading a Bulk NDJSON partition, and a fifth of
    reading and mapping one. Memory is still freed by reference counting; a cycle made meanwhile
    is collected after the pause, not lost. Counted under a lock, so concurrent or nested pauses
    restore the collector only when the last one ends, and only if it was enabled when the first
    began. For batch work only: a service that paused on every request could starve the collector.
    """
    global _pauses, _resumes
    with _pause_lock:
        if _pauses == 0:
            _resumes = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if _pauses == 0 and _resumes:
                gc.enable()


def decode_resource(raw: str | bytes | msgspec.Raw) -> Any:
    """One JSON value in full, as ``json.loads`` gives it (msgspec first; json.loads where it refuses)."""
    try:
        return _ANY.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return json.loads(raw if isinstance(raw, str) else bytes(raw))


def _full(data: bytes, reason: str, types: frozenset[str] | None) -> BundleRead:
    bundle = json.loads(data)  # raises exactly what the full parse raised before
    if not isinstance(bundle, dict):
        return BundleRead(type(bundle).__name__, full_parse=reason)
    resources = bundle_resources(bundle) if bundle.get("resourceType") == "Bundle" else []
    counted = Counter(r["resourceType"] for r in resources if isinstance(r.get("resourceType"), str))
    kept = [
        r
        for r in resources
        if types is None or not isinstance(r.get("resourceType"), str) or r["resourceType"] in types
    ]
    return BundleRead(bundle.get("resourceType"), kept, counted, len(resources) - len(kept), reason)


def read_bundle(data: bytes, types: frozenset[str] | None = READ_TYPES) -> BundleRead:
    """The resources of one Bundle file's bytes, decoding only ``types`` (None: every type).

    Raises what ``json.loads`` raises for input that is not JSON (the caller reports it).

    Decoded with the cyclic collector paused (:func:`collector_paused`): a bundle's resources are
    thousands of new dicts and lists, which set off collections that walked them again and again —
    and the whole heap, the engine's too, in the oldest generation (a sixth of screening bundles).
    """
    with collector_paused():
        return _read_bundle(data, types)


def _read_bundle(data: bytes, types: frozenset[str] | None) -> BundleRead:
    if data.startswith(_BOM):  # json.loads accepts a UTF-8 BOM on bytes; msgspec does not
        data = data[len(_BOM) :]
    if not data.isascii():
        try:  # msgspec does not check the UTF-8 of strings it skips; the full parse does
            data.decode("utf-8")
        except UnicodeDecodeError:
            return _full(data, "not UTF-8", types)
    try:
        top = _BUNDLE.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return _full(data, f"not a plain Bundle for the fast path: {exc}"[:200], types)
    if top.resourceType != "Bundle":
        return _full(data, "top level is not a Bundle", types)
    out = BundleRead("Bundle")
    try:
        _walk(top, out, types)
    except _FullParse as exc:
        return _full(data, str(exc), types)
    return out


def _place(resource: Any, search: Any, out: BundleRead, types: frozenset[str] | None) -> None:
    """A resource already decoded in full: kept, flattened or dropped exactly as bundle_resources does."""
    if not isinstance(resource, dict):
        return
    rtype = resource.get("resourceType")
    if isinstance(rtype, str) and rtype not in _STRUCTURAL:  # the common case, as bundle_resources has it
        out.types[rtype] += 1
        if types is not None and rtype not in types:
            out.skipped += 1
        else:
            out.resources.append(resource)
        return
    entry = {"resource": resource, "search": search}
    for r in bundle_resources({"resourceType": "Bundle", "entry": [entry]}):
        rtype = r.get("resourceType")
        if isinstance(rtype, str):
            out.types[rtype] += 1
            if types is not None and rtype not in types:
                out.skipped += 1
                continue
        out.resources.append(r)


def _walk(bundle: _Bundle, out: BundleRead, types: frozenset[str] | None) -> None:
    entries = bundle.entry if isinstance(bundle.entry, list) else [bundle.entry] if bundle.entry else []
    for entry in entries:
        raw = entry.resource
        if not len(raw):
            continue  # no resource (bundle_resources skips it too)
        first = _FIRST_KEY.match(memoryview(raw)[:80])
        if first is not None:
            rtype = first.group(1).decode()
            if types is None or rtype in types:
                # canonical order (resourceType first) and a type that is decoded anyway: no separate
                # look at the type; the decoded resource says what it is (a duplicate key included)
                _place(decode_resource(raw), entry.search, out, types)
                continue
            text = bytes(raw) if rtype not in _STRUCTURAL else b""
            if text.count(b"resourceType") == 1 and b"\\u" not in text:
                # the only "resourceType" in it, none spelled with escapes: nothing can override it
                out.types[rtype] += 1
                out.skipped += 1
                continue
        try:
            rtype = _HEAD.decode(raw).resourceType
        except msgspec.ValidationError:
            continue  # a resource that is not an object: bundle_resources skips it
        except msgspec.DecodeError as exc:
            raise _FullParse(f"an entry the fast path cannot read: {exc}"[:200]) from exc
        if not isinstance(rtype, str):  # cannot be classified: decoded in full and kept, never dropped
            resource = decode_resource(raw)
            out.resources.append(resource)
            continue
        search = entry.search if isinstance(entry.search, dict) else {}
        if rtype == "OperationOutcome" and search.get("mode") == "outcome":
            continue
        if rtype == "Bundle":
            try:
                _walk(_BUNDLE.decode(raw), out, types)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise _FullParse(f"a nested Bundle the fast path cannot read: {exc}"[:200]) from exc
            continue
        out.types[rtype] += 1
        if types is None or rtype in types:
            out.resources.append(decode_resource(raw))
        else:
            out.skipped += 1


class LineRef(msgspec.Struct):
    """One reference member of a routed line (``subject``, ``patient`` …): only its ``reference``."""

    reference: Any = None


class LineHead(msgspec.Struct):
    """What routing a Bulk NDJSON line needs: its type, id and patient references (the rest skipped).

    The reference members are typed as objects: a member of another shape (a string, a list) fails
    the decode and the line is parsed in full, which reads it as before (such a member names no patient).
    """

    resourceType: Any = None
    id: Any = None
    subject: LineRef | None = None
    patient: LineRef | None = None
    beneficiary: LineRef | None = None
    individual: LineRef | None = None


_LINE = msgspec.json.Decoder(LineHead)
LINE_HEAD = _LINE  # for a loop that calls the decoder itself (sources/ndjson.py routes most lines so)


def line_head(text: str | bytes) -> LineHead | None:
    """The routing members of one NDJSON line; None when the fast path cannot read it (parse it in full)."""
    try:
        return _LINE.decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
