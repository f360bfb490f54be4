"""What storing costs the hook server per call, and why not more with PostgreSQL (task hookcpu,
issue 19 goal 2(a)).

With ``serve --writer process`` the hook server only appends each evaluation to its own journal
before it answers; the writer process puts the lines into the database. Measured (callgrind, 60
calls of bench/hook.py's body): the server's request thread runs the same instructions with a
SQLite and with a PostgreSQL store (870.0 M vs 871.2 M), and makes the same system calls — no
database statement, no connection checkout, for either kind. Whatever the server costs more with
PostgreSQL is the machine shared with the writer process and the database backends, not work on
the answer path. These tests keep it so: a read or write of the database on the answer path (a
lookup, a bypass of the journal) would add per-call CPU that depends on the kind of database, and
a wait on it — and a paused database must never slow an answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from tests.service_helpers import LocalFhir, hook_request, medication_request
from tests.store_helpers import postgres_database
from tests.test_service_api import NOW, patient_record

from cds_engine.engine import Engine
from cds_engine.rules.compile import CompiledPack
from cds_engine.service.app import create_app
from cds_engine.service.discovery import prefetch_templates
from cds_engine.store import open_store
from cds_engine.store.fatigue import FatigueStore
from cds_engine.store.store import Store
from cds_engine.store.writer_supervisor import attach_external_journal

_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_RECORDED_AT = re.compile(rb'"recorded_at":"[^"]*"')


@contextmanager
def _serve_store(kind: str, tmp_path: Path) -> Iterator[Store]:
    """The store as ``serve --writer process`` opens it in a worker: migrated, its sink appending to
    an external journal. No writer process and no drainer: nothing else here uses the database, so
    every statement counted is one the answer path ran."""
    with (_sqlite(tmp_path) if kind == "sqlite" else postgres_database()) as url:
        store = open_store(url, spool_dir=tmp_path / "spool", journal=False, start_drainer=False)
        try:
            attach_external_journal(store)
            yield store
        finally:
            store.close()


@contextmanager
def _sqlite(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path}/cds.db"


class _DatabaseUse:
    """Counts statements run and connections checked out on an engine while it is attached."""

    def __init__(self, store: Store) -> None:
        self.engine = store.engine
        self.statements: list[str] = []
        self.checkouts = 0

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.statements.append(statement)

    def _checkout(self, *_args: Any) -> None:
        self.checkouts += 1

    def __enter__(self) -> _DatabaseUse:
        event.listen(self.engine, "before_cursor_execute", self._statement)
        event.listen(self.engine.pool, "checkout", self._checkout)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._statement)
        event.remove(self.engine.pool, "checkout", self._checkout)


def _bodies(pack: CompiledPack) -> list[tuple[str, dict[str, Any]]]:
    """Calls that store evaluations: an order-sign with cards (severe CKD), a quiet one, an order-select."""
    out = []
    for egfr, path in ((25, "order-sign"), (95, "order-sign"), (40, "order-select")):
        fhir = LocalFhir(patient_record(egfr=egfr))
        prefetch = fhir.prefetch(prefetch_templates(pack), {"patientId": "p1"})
        body = hook_request(path, "p1", [medication_request(dose=10, per_day=3)], prefetch=prefetch)
        out.append((f"/cds-services/{pack.id}-{path}", body))
    return out


def _journal_lines(store: Store) -> list[bytes]:
    """Every line of the store's journal segments, uuids and ``recorded_at`` masked (they are random)."""
    assert store.journal is not None
    store.journal.flush()
    lines = []
    for path in sorted(store.journal.directory.glob("journal-*.jsonl")):
        for line in path.read_bytes().splitlines():
            seen: dict[bytes, bytes] = {}
            line = _UUID.sub(lambda m, seen=seen: seen.setdefault(m.group(0), b"<u%d>" % len(seen)), line)
            lines.append(_RECORDED_AT.sub(b'"recorded_at":"<t>"', line))
    return lines


def _answer_with_store(kind: str, tmp_path: Path, engine: Engine, pack: CompiledPack,
                       ) -> tuple[list[dict[str, Any]], list[bytes], _DatabaseUse]:
    """Answers (card uuids masked) and journal lines of :func:`_bodies`, and the database use meanwhile,
    with the app wired as ``serve`` wires it (the journal sink, the fatigue state in the store)."""
    with _serve_store(kind, tmp_path) as store:
        fatigue = FatigueStore(store.engine, available=lambda: bool(store.sink.available))
        app = create_app(lambda: engine, sink=store.sink, auth=None, fatigue=fatigue, clock=lambda: NOW)
        answers = []
        with TestClient(app) as client:
            with _DatabaseUse(store) as use:
                for path, body in _bodies(pack) * 2:
                    response = client.post(path, json=body)
                    assert response.status_code == 200, response.text
                    masked = _UUID.sub(b"<uuid>", response.content)
                    answers.append({"path": path, "body": masked.decode()})
            lines = _journal_lines(store)
    return answers, lines, use


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_the_answer_path_touches_no_database(tmp_path: Path, engine: Engine, pack: CompiledPack,
                                             kind: str) -> None:
    """Every evaluation is journaled before the answer, and none of it reads or writes the database."""
    answers, lines, use = _answer_with_store(kind, tmp_path, engine, pack)
    assert len(answers) == 6
    assert any('"cards":[]' not in a["body"] for a in answers)  # some calls did answer with cards
    assert len(lines) == 6 and all(line.startswith(b'{"type":"evaluation",') for line in lines)
    assert use.statements == [] and use.checkouts == 0, (use.statements[:3], use.checkouts)


@pytest.mark.postgres
def test_the_server_does_the_same_for_either_database(tmp_path: Path, engine: Engine,
                                                       pack: CompiledPack) -> None:
    """The same calls give the same answers and the same journal lines, byte for byte (random ids
    masked), whether the store is SQLite or PostgreSQL: the kind of database changes nothing the
    server does per call (what it costs more with PostgreSQL is the neighbours' CPU, not its own)."""
    sqlite = _answer_with_store("sqlite", tmp_path / "sqlite", engine, pack)
    postgresql = _answer_with_store("postgresql", tmp_path / "postgresql", engine, pack)
    assert sqlite[0] == postgresql[0]
    assert sqlite[1] == postgresql[1]
