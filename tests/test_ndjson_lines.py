"""Bulk NDJSON lines read as bytes in large blocks give the lines the text stream gave (issue 20 item 4).

:func:`~cds_engine.sources.compressed.byte_lines` replaced ``open_text`` + ``capped_lines`` for
partitioning: each case below is read both ways, with the blocks cut small so that line ends,
``\\r\\n`` pairs and long lines fall across block boundaries. Then the partitioning itself on the
odd cases: a line whose type contradicts its file name, blank and whitespace lines, Unicode spaces
at a line's ends, a byte-order mark, a gzip file cut short.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

import cds_engine.sources.compressed as compressed
from cds_engine.sources.compressed import byte_lines, capped_lines, open_text
from cds_engine.sources.ndjson import partition_export, read_partition
from conftest import REPO, RULES

AS_OF = "2026-01-15T00:00:00+00:00"

_P = '{"resourceType": "Patient", "id": "p"}'
CASES: dict[str, bytes] = {
    "lf": f"{_P}\n{_P}\n".encode(),
    "no final newline": f"{_P}\n{_P}".encode(),
    "crlf": f"{_P}\r\n{_P}\r\n".encode(),
    "lone cr": f"{_P}\r{_P}\r".encode(),
    "cr then lf apart": f"{_P}\r\r\n\r\n{_P}\n\r".encode(),
    "blank and spaces": f"\n   \n\t\n{_P}\n\n \r\n{_P}\n\n".encode(),
    "bom": b"\xef\xbb\xbf" + f"{_P}\n{_P}\n".encode(),
    "unicode": '{"resourceType": "Patient", "id": "é\u2028ü"}\n\u00a0{"a": 1}\u3000\n\x1c{}\x1f\n'.encode(),
    "long lines": ("x" * 60 + "\n" + _P + "\n" + "y" * 59 + "\n" + "z" * 130 + "\r" + _P).encode(),
    "long at end": (_P + "\n" + "q" * 80).encode(),
    "only cr": b"\r",
    "empty": b"",
}


def _old(path: Path, limit: int) -> list[bytes | None]:
    with open_text(path) as fh:
        return [None if x is None else x.removesuffix("\n").encode() for x in capped_lines(fh, limit)]


@pytest.mark.parametrize("piece", [3, 7, 64, 1 << 20])
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("gz", [False, True])
def test_byte_lines_equal_the_text_stream(tmp_path, monkeypatch, name, piece, gz):
    monkeypatch.setattr(compressed, "_PIECE", piece)
    path = tmp_path / ("x.ndjson.gz" if gz else "x.ndjson")
    path.write_bytes(gzip.compress(CASES[name]) if gz else CASES[name])
    # the cap counts bytes where the text stream counted characters: every line here is shorter
    # than 60 in both or longer in both
    assert list(byte_lines(path, limit=60)) == _old(path, 60)


@pytest.mark.parametrize("piece", [5, 50, 1 << 20])
def test_byte_lines_refuse_what_is_not_utf8_at_its_line(tmp_path, monkeypatch, piece):
    # 50: the bad byte in one piece, the end of its line in the next
    monkeypatch.setattr(compressed, "_PIECE", piece)
    path = tmp_path / "x.ndjson"
    path.write_bytes(f"{_P}\n".encode() + b'{"id": "\xff"}' + f"\n{_P}\n".encode())
    got: list[bytes | None] = []
    with pytest.raises(UnicodeDecodeError):
        for line in byte_lines(path):
            got.append(line)
    assert got == [_P.encode()]
    with pytest.raises(UnicodeDecodeError), open_text(path) as fh:  # as the text stream did
        list(capped_lines(fh))


def test_byte_lines_keep_the_ratio_cap(tmp_path):
    bomb = tmp_path / "bomb.ndjson.gz"
    bomb.write_bytes(gzip.compress(b"\n" * (8 << 20)))
    with pytest.raises(compressed.InputTooLarge):
        sum(1 for _ in byte_lines(bomb))


def test_multi_member_gzip_is_read_to_the_end(tmp_path):
    path = tmp_path / "x.ndjson.gz"
    path.write_bytes(gzip.compress(f"{_P}\n{_P[:10]}".encode()) + gzip.compress(f"{_P[10:]}\n".encode()))
    assert list(byte_lines(path)) == [_P.encode()] * 2


def _res(rtype: str, rid: str, who: str | None = None) -> str:
    body: dict = {"resourceType": rtype, "id": rid}
    if who is not None:
        body["subject" if rtype != "Claim" else "patient"] = {"reference": f"Patient/{who}"}
    return json.dumps(body)


def _groups(tmp_path: Path, export: Path) -> tuple[dict, list]:
    result = partition_export(sorted(export.iterdir()), tmp_path / "parts", 2)
    groups = {
        key: (file.rsplit("/", 1)[-1], n, [r["id"] for r in res])
        for part in result.parts
        for key, file, n, res in read_partition(part, result.shared)
    }
    return groups, [(e.file.rsplit("/", 1)[-1], e.line, e.reason[:24]) for e in result.errors]


def test_a_line_is_routed_by_its_content_not_its_file_name(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "Claim.ndjson").write_text(
        "\n".join([_res("Claim", "c1", "a"), _res("Patient", "a"), _res("Observation", "o1", "a")]) + "\n"
    )
    (export / "Location.ndjson").write_text(
        "\n".join([_res("Location", "l1"), _res("Condition", "k1", "b"), _res("Medication", "m1")]) + "\n"
    )
    (export / "Patient.ndjson").write_text(_res("Patient", "b") + "\n" + _res("Claim", "c2", "ghost") + "\n")
    groups, errors = _groups(tmp_path, export)
    assert errors == []
    assert groups["a"] == ("Claim.ndjson", 2, ["a", "o1", "m1"])  # the Medication is shared
    assert groups["b"] == ("Patient.ndjson", 1, ["k1", "b", "m1"])
    assert groups["ghost"] == ("Patient.ndjson", -1, [])  # a Claim-only patient: rejected, not dropped


def test_odd_lines_keep_their_numbers_and_errors(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    patient = "\u00a0" + _res("Patient", "a") + "\u2003"  # Unicode spaces around it
    text = "\r\n".join(["", "  ", patient, "{not json", _res("Observation", "o", "a"), "\t"])
    (export / "Observation.ndjson").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (export / "Patient.ndjson.gz").write_bytes(gzip.compress((_res("Patient", "z") + "\n").encode())[:-12])
    groups, errors = _groups(tmp_path, export)
    assert groups == {"a": ("Observation.ndjson", 3, ["a", "o"])}
    assert errors == [
        ("Observation.ndjson", 4, "line is not JSON: JSONDe"),
        ("Patient.ndjson.gz", 0, "file cannot be read to t"),  # cut short: reported, the run goes on
    ]


# ── shared resources: each distinct line once per patient ───────────────────────────────────


def _bulk(folder: Path, repeat_medications: int) -> Path:
    """The shipped Synthea bundles as a Bulk export; the Medication file's lines repeated (one
    more Medication that only a test order references, written between the repeats)."""
    from cds_engine.batch.inputs import plan_inputs
    from cds_engine.sources.compressed import read_bundle_bytes
    from cds_engine.sources.fhir import bundle_resources

    by_type: dict[str, list[str]] = {}
    for f in plan_inputs([REPO / "examples" / "synthea"]).bundles:
        for r in bundle_resources(json.loads(read_bundle_bytes(f))):
            by_type.setdefault(r["resourceType"], []).append(json.dumps(r))
    meds = by_type.pop("Medication", [])
    extra = json.dumps({"resourceType": "Medication", "id": "m-test", "code": {"coding": [
        {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1292", "display": "Baclofen"}]}})
    by_type["Medication"] = [*meds, extra, *(meds * (repeat_medications - 1))]
    patients = [json.loads(x)["id"] for x in by_type["Patient"]]
    by_type["MedicationRequest"] += [  # an active order known only through the shared Medication
        json.dumps({"resourceType": "MedicationRequest", "id": f"mr-{i}", "status": "active",
                    "intent": "order", "authoredOn": "2025-12-01", "subject": {"reference": f"Patient/{p}"},
                    "medicationReference": {"reference": "Medication/m-test"}})
        for i, p in enumerate(patients)
    ]
    folder.mkdir()
    for rtype, lines in by_type.items():
        (folder / f"{rtype}.ndjson").write_text("\n".join(lines) + "\n")
    return folder


def _screen(inputs: Path, out: Path) -> list:
    import polars as pl

    from cds_engine.batch.runner import ScreenOptions, run_screen

    run_screen(ScreenOptions(inputs=[inputs], out=out, rules=RULES, as_of=AS_OF, progress=False))
    where = str(inputs)  # the same rows whichever folder they came from
    return [
        pl.read_parquet(out / name).with_columns(pl.col(pl.String).str.replace_all(where, "", literal=True))
        for name in ("alerts.parquet", "patients.parquet")
    ] + [(out / "errors.csv").read_text().replace(where, "")]


def test_repeated_shared_lines_are_read_once_and_change_nothing(tmp_path):
    once = _bulk(tmp_path / "once", 1)
    thrice = _bulk(tmp_path / "thrice", 3)
    result = partition_export(sorted(thrice.iterdir()), tmp_path / "parts", 1)
    resources = [res for _k, _f, n, res in read_partition(result.parts[0], result.shared) if n >= 0]
    distinct = len(set((once / "Medication.ndjson").read_text().splitlines()))
    assert resources
    assert all(sum(r["resourceType"] == "Medication" for r in res) == distinct for res in resources)
    a, b = _screen(once, tmp_path / "out-once"), _screen(thrice, tmp_path / "out-thrice")
    assert a[0].height > 0
    for x, y in zip(a, b, strict=True):
        assert x == y if isinstance(x, str) else x.equals(y)


def test_a_small_export_file_cut_short_is_read_up_to_the_cut(tmp_path):
    """A gzip file cut short is an export file still when its name says so (it was a "corrupt bundle"
    when the cut fell within the first 64 KiB, and read up to the cut when later)."""
    from cds_engine.batch.inputs import sniff

    export = tmp_path / "export"
    export.mkdir()
    body = "".join(_res("Patient", f"p{i}") + "\n" for i in range(40)).encode()
    (export / "Patient.ndjson.gz").write_bytes(gzip.compress(body)[:-30])
    assert sniff(export / "Patient.ndjson.gz")[0] == "ndjson"
    out = _screen(export, tmp_path / "out")
    assert 0 < out[1].height < 40  # the patients before the cut
    assert "file cannot be read to the end" in out[2]
