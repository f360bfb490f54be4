"""Selective decoding (issue 20 item 4) gives what the full ``json.loads`` parse gives: same facts, alerts.

Compared on the shipped examples, on bundles generated from them with odd shapes (``resourceType``
last, ``\\u`` escapes, a ``resourceType`` nested in ``contained`` before the top-level one, gzip, a
byte-order mark, CRLF, nested Bundles, ``entry`` as a single object), and on a Bulk NDJSON export
cut from the same patients. Input the fast path cannot vouch for (NaN, lone surrogates, UTF-16,
an entry with no type) must come out of the full parse — never dropped.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import cds_engine.batch.work as work
import cds_engine.sources.ndjson as ndjson
from cds_engine.batch.inputs import plan_inputs
from cds_engine.batch.order_text import parse_order_text
from cds_engine.batch.runner import ScreenOptions, run_screen
from cds_engine.sources.compressed import read_bundle_bytes
from cds_engine.sources.fhir import bundle_resources, facts_from_resources
from cds_engine.sources.selective import READ_TYPES, _full, read_bundle
from conftest import REPO, RULES

SYNTHEA = REPO / "examples" / "synthea"
AS_OF = "2026-01-15T00:00:00+00:00"
SRC = REPO / "src" / "cds_engine"


def shipped() -> list[tuple[str, bytes]]:
    return [(f.name, read_bundle_bytes(f)) for f in plan_inputs([SYNTHEA]).bundles]


def expected(data: bytes) -> tuple[list[dict[str, Any]], Counter[str]]:
    """The full parse, filtered to what the mapping reads (untyped resources kept)."""
    text = data.decode("utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else data.decode("utf-8-sig")
    resources = bundle_resources(json.loads(text))
    types = Counter(r["resourceType"] for r in resources if isinstance(r.get("resourceType"), str))
    kept = [
        r for r in resources if not isinstance(r.get("resourceType"), str) or r["resourceType"] in READ_TYPES
    ]
    return kept, types


def test_read_types_cover_what_the_mapping_reads():
    """Every resource type the FHIR mapping looks up is decoded (else a fact would silently go missing)."""
    names: set[str] = set()
    for name in ("fhir.py", "fhir_meds.py", "gestation.py", "history.py", "taper.py", "dose_counts.py"):
        path = SRC / "sources" / name
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        names |= set(re.findall(r'by_type\.get\("([A-Za-z]+)"', text))
        names |= set(re.findall(r'resourceType"\)\s*[!=]=\s*"([A-Za-z]+)"', text))
    names |= set(
        re.findall(r'resourceType"\)\s*[!=]=\s*"([A-Za-z]+)"', (SRC / "batch" / "work.py").read_text())
    )
    assert names, "the pattern no longer finds the mapping's lookups: update this test"
    assert names - {"Bundle", "OperationOutcome"} <= READ_TYPES


@pytest.mark.parametrize("name,data", shipped(), ids=lambda v: v if isinstance(v, str) else "")
def test_shipped_bundles_same_resources_and_facts(name, data, pack):
    got = read_bundle(data)
    kept, types = expected(data)
    assert got.full_parse is None, got.full_parse
    assert got.root == "Bundle"
    assert got.resources == kept
    assert got.types == types
    assert got.skipped == sum(types.values()) - sum(1 for r in kept if isinstance(r.get("resourceType"), str))
    draft = parse_order_text("baclofen 5 mg PO TID", pack.vocabulary).to_fhir()
    moment = work.datetime.fromisoformat(AS_OF)
    full = bundle_resources(json.loads(data))
    kw = {
        "as_of": moment,
        "vocab": pack.vocabulary,
        "drug_class": pack.context.drug_class,
        "draft_orders": [draft],
    }
    assert facts_from_resources(got.resources, **kw) == facts_from_resources(full, **kw)


# ── odd shapes, generated from a shipped bundle ──────────────────────────────────────────────


def _a_bundle() -> dict[str, Any]:
    _name, data = max(shipped(), key=lambda item: len(item[1]))  # the largest: every common type
    return json.loads(data)


def _type_last(node: Any) -> Any:
    if isinstance(node, dict):
        items = [(k, _type_last(v)) for k, v in node.items() if k != "resourceType"]
        return dict(items + ([("resourceType", node["resourceType"])] if "resourceType" in node else []))
    if isinstance(node, list):
        return [_type_last(v) for v in node]
    return node


def _with_contained(bundle: dict[str, Any]) -> dict[str, Any]:
    """Each Claim gets a contained Patient *before* its own resourceType (must stay a skipped Claim),
    each Condition a contained Claim (must stay a decoded Condition)."""
    out = json.loads(json.dumps(bundle))
    for entry in out["entry"]:
        r = entry["resource"]
        if r["resourceType"] == "Claim":
            entry["resource"] = {"contained": [{"resourceType": "Patient", "id": "fake"}], **r}
        elif r["resourceType"] == "Condition":
            entry["resource"] = {"contained": [{"resourceType": "Claim", "id": "c"}], **r}
    return out


def _noted(bundle: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(bundle))
    for entry in out["entry"]:
        entry["resource"]["note"] = [{"text": "Ünïcödé ✓ 😀 — façade"}]
    return out


def _odd_variants() -> list[tuple[str, bytes, bool]]:
    """(label, file bytes, whether the fast path must hand over to the full parse)."""
    b = _a_bundle()
    plain = json.dumps(b).encode()
    first = b["entry"][0]
    nested = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": b}, *b["entry"][:3]]}
    odd_entries = {
        "resourceType": "Bundle",
        "entry": [
            *b["entry"][:5],
            {"resource": {"id": "no-type", "status": "final"}},  # unclassifiable: kept
            {"resource": {"resourceType": 7, "id": "numeric-type"}},  # unclassifiable: kept
            {"resource": "not an object"},
            {"fullUrl": "urn:uuid:x"},
            {"resource": {"resourceType": "OperationOutcome", "id": "oo"}, "search": {"mode": "outcome"}},
            {"resource": {"resourceType": "OperationOutcome", "id": "oo2"}},
        ],
    }
    nan = {
        "resourceType": "Bundle",
        "entry": [*b["entry"], {"resource": {"resourceType": "Claim", "x": "NAN"}}],
    }
    return [
        ("plain", plain, False),
        ("type last, deep", json.dumps(_type_last(b)).encode(), False),
        (
            "escaped strings",
            json.dumps(b, ensure_ascii=True).replace('"Observation"', '"Obs\\u0065rvation"').encode(),
            False,
        ),
        (
            "escaped key",
            plain.replace(b'"resourceType": "Patient"', b'"resource\\u0054ype": "Patient"'),
            False,
        ),
        ("contained types", json.dumps(_with_contained(b)).encode(), False),
        (
            "non-ASCII text",
            json.dumps(_noted(b), ensure_ascii=False).encode(),
            False,
        ),
        ("BOM", b"\xef\xbb\xbf" + plain, False),
        ("CRLF, indented", json.dumps(b, indent=1).replace("\n", "\r\n").encode(), False),
        ("nested Bundle", json.dumps(nested).encode(), False),
        ("entry as one object", json.dumps({"resourceType": "Bundle", "entry": first}).encode(), False),
        ("odd entries", json.dumps(odd_entries).encode(), False),
        ("NaN in a skipped Claim", json.dumps(nan).replace('"NAN"', "NaN").encode(), True),
        ("lone surrogate", json.dumps(nan).replace('"NAN"', '"\\ud800"').encode(), True),
        ("UTF-16", json.dumps(b).encode("utf-16"), True),
        (
            "duplicate resourceType",
            plain.replace(
                b'{"resourceType": "Claim"', b'{"resourceType": "Patient", "resourceType": "Claim"', 3
            ),
            False,
        ),
    ]


@pytest.mark.parametrize(
    "label,data,falls_back", _odd_variants(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_odd_bundles_same_as_full_parse(label, data, falls_back):
    got = read_bundle(data)
    kept, types = expected(data)
    assert got.resources == kept, label
    assert got.types == types, label
    assert (got.full_parse is not None) == falls_back, got.full_parse
    untyped = [r for r in got.resources if not isinstance(r.get("resourceType"), str)]
    if label == "odd entries":  # never dropped: both unclassifiable resources are there
        assert {r["id"] for r in untyped} == {"no-type", "numeric-type"}


def test_not_json_raises_like_json_loads():
    for data in (
        b'{"resourceType": "Bundle", "entry": [',
        b'{"resourceType": "Bundle", "entry": [{"resource": {"a": tru}}]}',
    ):
        with pytest.raises(ValueError):
            read_bundle(data)
    bad_utf8 = b'{"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Claim", "x": "\xff"}}]}'
    with pytest.raises(UnicodeDecodeError):  # in a skipped resource too, as json.loads
        read_bundle(bad_utf8)
    assert read_bundle(b"[1, 2]").root == "list"
    assert read_bundle(b'{"resourceType": "Patient", "id": "p"}').root == "Patient"


# ── end to end: selective screening = full-parse screening (bundles and Bulk NDJSON) ─────────


def _export(root: Path, bundles: list[bytes]) -> Path:
    """A Bulk export cut from the bundles: one file per type, some gzipped, a BOM, CRLF, odd lines."""
    by_type: dict[str, list[str]] = {}
    for data in bundles:
        for r in bundle_resources(json.loads(data)):
            by_type.setdefault(r["resourceType"], []).append(
                json.dumps(_type_last(r) if len(by_type) % 2 else r)
            )
    by_type.setdefault("Observation", []).extend(
        ["{not json", json.dumps({"resourceType": "Observation", "id": "lost", "status": "final"})]
    )
    by_type["Claim"].append(
        json.dumps({"resourceType": "Claim", "id": "orphan", "patient": {"reference": "Patient/ghost"}})
    )
    folder = root / "bulk"
    folder.mkdir()
    for i, (rtype, lines) in enumerate(sorted(by_type.items())):
        body = ("\r\n" if i % 3 == 0 else "\n").join(lines) + "\n"
        raw = (b"\xef\xbb\xbf" if i % 4 == 1 else b"") + body.encode()
        if i % 2:
            (folder / f"{rtype}.ndjson.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / f"{rtype}.ndjson").write_bytes(raw)
    return folder


class _Everything(frozenset):
    def __contains__(self, item: object) -> bool:
        return True


def _screen(inputs: list[Path], out: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    result = run_screen(
        ScreenOptions(
            inputs=inputs,
            out=out,
            rules=RULES,
            as_of=AS_OF,
            assume_order="baclofen 5 mg PO TID",
            progress=False,
        )
    )
    assert result.summary["reconciled"]
    key = ["source", "row", "patient_id"]
    alerts = pl.read_parquet(out / "alerts.parquet").sort([*key, "rule_id", "tier_id"], nulls_last=True)
    patients = pl.read_parquet(out / "patients.parquet").sort(key, nulls_last=True)
    errors = pl.read_csv(out / "errors.csv", infer_schema=False).sort(
        ["source", "row", "reason"], nulls_last=True
    )
    return alerts, patients, errors


def test_screen_selective_equals_full_parse(tmp_path, monkeypatch):
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    datas = [data for _, data in shipped()]
    for i, data in enumerate(datas):
        (bundles / f"b{i:02d}.json.gz").write_bytes(gzip.compress(data))
    for label, data, _ in _odd_variants()[:11]:
        (bundles / f"odd-{label.replace(' ', '_').replace(',', '')}.json").write_bytes(data)
    bulk = _export(tmp_path, datas)
    inputs = [bundles, bulk]
    fast = _screen(inputs, tmp_path / "fast")
    assert fast[1].height > 20 and fast[0].height > 20
    monkeypatch.setattr(work, "read_bundle", lambda data: _full(data, "reference", None))
    monkeypatch.setattr(ndjson, "line_head", lambda text: None)
    monkeypatch.setattr(ndjson, "READ_TYPES", _Everything())
    full = _screen(inputs, tmp_path / "full")
    for a, b in zip(fast, full, strict=True):
        assert a.equals(b)
    assert fast[2].filter(pl.col("reason").str.contains("ghost")).height == 1  # a Claim-only patient
    # only the "{not json" line: the files that start with a byte-order mark lose no line
    assert fast[2].filter(pl.col("reason").str.contains("not JSON")).height == 1


def test_fhir_chunk_per_patient_equals_vector(tmp_path, monkeypatch):
    """Small FHIR chunks are evaluated patient by patient (the oracle): the same rows, in the same order,
    as the vector evaluation of the same chunk."""
    inputs = [SYNTHEA]
    small = _screen(inputs, tmp_path / "per-patient")
    monkeypatch.setattr(work, "PER_PATIENT_BELOW", 0)
    vector = _screen(inputs, tmp_path / "vector")
    assert small[0].height > 20
    for a, b in zip(small, vector, strict=True):
        assert a.equals(b)
    unsorted = [pl.read_parquet(tmp_path / d / "alerts.parquet") for d in ("per-patient", "vector")]
    assert unsorted[0].equals(unsorted[1])
