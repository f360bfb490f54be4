"""Shared test fixtures: the engine on the repository's rules, and the shipped example patients."""

from __future__ import annotations

import gzip
import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from cds_engine.engine import Engine

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "rules"
EXAMPLES = REPO / "examples"  # everything the tests read ships with the repository


def baclofen_rules_copy(tmp_path: Path) -> Path:
    """A rules folder of its own (vocabulary and the baclofen pack) that a test may edit."""
    root = tmp_path / "rules"
    root.mkdir()
    shutil.copytree(RULES / "vocabulary", root / "vocabulary")
    (root / "baclofen").mkdir()
    shutil.copy(RULES / "baclofen" / "pack.yaml", root / "baclofen" / "pack.yaml")
    return root


@pytest.fixture(scope="session")
def engine() -> Engine:
    return Engine.from_dir(RULES)


@pytest.fixture(scope="session")
def pack(engine: Engine):
    return next(p for p in engine.packs if p.id == "baclofen")


# ── no PHI in any log line of the whole suite ─────────────────────────────────────────────────
# Every log record emitted in this process (INFO and up) is kept; when the session ends, they are
# scanned for the names and birth dates of the patients the tests use (the Synthea bundles in
# examples/synthea and the fixtures). A hit fails the run. Subprocess logs are checked by their own tests.
class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record is not our concern here
            text = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]}"
        self.lines.append(text)


_COLLECT = _Collect()


def pytest_sessionstart(session: pytest.Session) -> None:
    root = logging.getLogger()
    root.addHandler(_COLLECT)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


def _patient_identifiers() -> set[str]:
    found: set[str] = set()
    for path in sorted(REPO.glob("fixtures/**/*.json")):
        birth = json.loads(path.read_text(encoding="utf-8")).get("facts", {}).get("birth_date")
        if birth and birth < "2000-01-01":  # recent dates collide with clinical dates in messages
            found.add(birth)
    synthea = EXAMPLES / "synthea"
    for path in sorted(synthea.rglob("*.json.gz")) if synthea.exists() else []:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            bundle = json.load(fh)
        for entry in bundle.get("entry", []):
            resource = entry.get("resource", {})
            if resource.get("resourceType") != "Patient":
                continue
            if resource.get("birthDate"):
                found.add(resource["birthDate"])
            for name in resource.get("name", []):
                found.update(n for n in [name.get("family"), *name.get("given", [])] if n and len(n) >= 5)
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    logging.getLogger().removeHandler(_COLLECT)
    if not _COLLECT.lines:
        return
    identifiers = _patient_identifiers()
    pattern = re.compile("|".join(re.escape(i) for i in sorted(identifiers, key=len, reverse=True)))
    leaks = [line for line in _COLLECT.lines if pattern.search(line)] if identifiers else []
    if leaks:
        print(f"\nPHI in log lines ({len(leaks)}), e.g.: {leaks[0][:200]!r}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
