"""The group-commit writer draining a backlog: records per second, CPU and statements per batch.

Run: ``python bench/writer.py [--records 5000] [--db sqlite,postgresql] [--batch N] [--one-order] [--tail]
[--lines DUMP.json] [--smoke]``.

Fills a journal with ``--records`` evaluations (order-select + order-sign pairs of one order, eight
calls per patient, demographics sent, one alert each — as the hook writes them) while no writer
runs, as after a database pause; then starts the real :class:`GroupWriter` on a fresh database and
times the drain. Reported: records/s, CPU ms per record of this process (the writer thread is the
only busy thread) and, for PostgreSQL, of the writer's server backend (from /proc), commits, and
statements per commit (a ``before_cursor_execute`` count: an executemany counts once).
PostgreSQL: a fresh database on the server named by ``CDS_TEST_DATABASE_URL``, dropped after.

``--batch N`` caps a group commit at N records (the writer's default is 500): under load the
batches are small (a few records per linger), so ``--batch 5`` shows the fixed cost per commit that
the backlog drain hides. ``--one-order`` writes every call on one order of one patient, 1 ms apart
(one ordering session) — as ``bench/load.py`` does, signing the same draft order on every call — so
a cost that grows with the rows an order already holds shows as a falling rate.

``--tail`` measures the writer *process* (``serve``'s default): the lines go to files as the
workers write them (an external journal), and the drain reads them as that process does
(:class:`JournalTail`: parse and validate every line) with its garbage-collector setting
(``tune_collector``). Without it, the writer gets the validated records in memory (``--writer
thread``), so parsing is not measured. ``--batch 20`` and ``--batch 200`` are about the commit sizes
of ``bench/hook.py --alternate`` at c1 and c16; ``--records 3000`` the backlog of ``--pause``.

``--lines DUMP.json`` stores real hook records instead of the one-alert test record: the journal
lines of ``bench/hook_cpu.py --store journal --dump DUMP.json`` (Synthea patients, ~3.6 alerts and
~7 KB a line), taken in turn with fresh ids, ``as_of`` one second apart. The test record costs a
third to a fifth of what a real line costs the writer and PostgreSQL (issue 19 item 2a: with
``--tail --batch 80`` about 0.4 ms writer + 0.5 ms PostgreSQL per line, as the c1 runs of
``bench/hook.py`` showed), so figures per line are to be taken from it.

Goal (issue 19 item 2): a backlog drains within 10 s of the database's return, and the writer keeps
up with the load goal (200 req/s on 2 cores with everything else) — so it must sustain well above
that with a small share of one core. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench_common import machine_header, use_repo_paths

use_repo_paths()

from sqlalchemy import Engine, event, func, select  # noqa: E402

from cds_engine.sources.demographics import PatientDemographics  # noqa: E402
from cds_engine.store import open_store  # noqa: E402
from cds_engine.store.api import EvaluationRecord  # noqa: E402
from cds_engine.store.db import utcnow  # noqa: E402
from cds_engine.store.group_commit import GroupWriter  # noqa: E402
from cds_engine.store.journal import Journal  # noqa: E402
from cds_engine.store.journal_tail import JournalTail  # noqa: E402
from cds_engine.store.models import Evaluation  # noqa: E402
from cds_engine.store.writer_process import tune_collector  # noqa: E402
from store_helpers import NOW, make_record  # noqa: E402


@contextmanager
def database(kind: str, workdir: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{workdir}/cds.db"
        return
    from store_helpers import postgres_admin_url, postgres_database

    if postgres_admin_url() is None:
        raise SystemExit("bench/writer.py: set CDS_TEST_DATABASE_URL for the PostgreSQL run (or --db sqlite)")
    with postgres_database() as url:
        yield url


def _backend_cpu(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _line(entry: dict[str, Any], record: Any) -> bytes:
    """The journal line as ``JournalSink.record_evaluation`` writes it."""
    head = json.dumps(entry, separators=(",", ":"))[:-1].encode()
    return head + b',"record":' + record.model_dump_json().encode() + b"}"


def _dumped_lines(path: Path) -> list[str]:
    """The journal lines of a ``bench/hook_cpu.py --store journal --dump`` file (masked ids)."""
    lines = json.loads(path.read_text(encoding="utf-8"))["journal"]
    return [line for line in lines if line.startswith('{"type":"evaluation"')]


_MASK = re.compile(r"<uuid\d+>")
_AS_OF = re.compile(r'"as_of":"[^"]*"')


def _fill_dumped(journal: Journal, records: int, lines: list[str]) -> None:
    """Real hook records (several alerts, evidence, sources): each masked uuid made a fresh one
    (consistently within a line), ``recorded_at`` now and ``as_of`` one second later per line — so
    every line is a new call, and a draft order evaluated again lies in the same ordering session."""
    for n in range(records):
        fresh: dict[str, str] = {}
        text = _MASK.sub(lambda m, ids=fresh: ids.setdefault(m.group(0), str(uuid.uuid4())),  # type: ignore[misc]
                         lines[n % len(lines)])
        text = text.replace('"<t>"', json.dumps(utcnow().isoformat()))
        as_of = (NOW + timedelta(seconds=n)).isoformat().replace("+00:00", "Z")
        text = _AS_OF.sub(f'"as_of":"{as_of}"', text, count=1)
        entry = json.loads(text)
        record = EvaluationRecord.model_validate(entry.pop("record"))
        journal.append(entry, record, text.encode())


def _fill(journal: Journal, records: int, one_order: bool = False, lines: list[str] | None = None) -> None:
    if lines:
        _fill_dumped(journal, records, lines)
        return
    for n in range(records):
        hook = "order-select" if n % 2 == 0 else "order-sign"
        if one_order:
            record = make_record(hook=hook, patient="Patient/0", order_key="order-0",
                                 as_of=NOW + timedelta(milliseconds=n))
        else:
            record = make_record(hook=hook, patient=f"Patient/{n // 8}", order_key=f"order-{n // 2}",
                                 as_of=NOW + timedelta(seconds=n))
        who = PatientDemographics(name=f"Name {n // 8}", birth_date="1950-01-01",
                                  identifiers=[("MRN", str(n // 8))])
        entry = {"type": "evaluation", "id": str(uuid.uuid4()), "recorded_at": utcnow().isoformat()}
        record = record.model_copy(update={"demographics": who})
        journal.append(entry, record, _line(entry, record))


def _watch(engine: Engine) -> tuple[Counter[str], list[int]]:
    statements: Counter[str] = Counter()
    backends: list[int] = []

    def count(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        statements[statement.split(None, 1)[0] + (" (many)" if many else "")] += 1

    def backend(dbapi_conn: Any, record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("SELECT pg_backend_pid()")
        backends.append(int(cursor.fetchone()[0]))
        cursor.close()

    event.listen(engine, "before_cursor_execute", count)
    if engine.dialect.name == "postgresql":
        event.listen(engine, "connect", backend)
        engine.dispose()  # the migration's connections: the writer's own one is watched from here on
    return statements, backends


def drain(kind: str, records: int, batch: int = 500, one_order: bool = False, tail: bool = False,
          lines: list[str] | None = None) -> str:
    with tempfile.TemporaryDirectory(prefix="cds-writer-") as tmp, database(kind, Path(tmp)) as url:
        store = open_store(url, spool_dir=Path(tmp) / "spool", start_drainer=False)
        journal = Journal(Path(tmp) / "journal", external=tail).start()
        try:
            _fill(journal, records, one_order, lines)
            statements, backends = _watch(store.engine)
            source: Any = journal
            if tail:  # as the writer process: read the files, and its collector setting
                journal.retire()
                journal.flush()
                source = JournalTail(journal.directory, lambda entry, exc: print("rejected:", exc))
                tune_collector()
            writer = GroupWriter(store.engine, source, lambda entry, exc: print("rejected:", exc),
                                 adopt_interval=1e9, batch=batch, wait=0.0 if tail else 0.005)
            before = resource.getrusage(resource.RUSAGE_SELF)
            start = time.monotonic()
            writer.start()
            while journal.files() if tail else journal.backlog():
                time.sleep(0.005)
            wall = time.monotonic() - start
            after = resource.getrusage(resource.RUSAGE_SELF)
            server = _backend_cpu(backends)
            writer.close()
            with store.engine.connect() as conn:
                stored = conn.scalar(select(func.count()).select_from(Evaluation))
        finally:
            journal.close()
            store.close()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    total = sum(statements.values())
    server_ms = f"{server / records * 1000:.3f}" if kind == "postgresql" else "–"
    shape = (f"{batch}{' one order' if one_order else ''}{' tail' if tail else ''}"
             f"{' hook lines' if lines else ''}")
    return (f"| {kind} | {records:,} | {shape} | {wall:.2f} | {records / wall:,.0f} | "
            f"{cpu / records * 1000:.3f} | "
            f"{server_ms} | {writer.commits} | {total / max(1, writer.commits):.1f} | "
            f"{'ok' if stored == records else f'STORED {stored}'} | "
            f"{', '.join(f'{k} {v}' for k, v in sorted(statements.items()))} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--db", default="sqlite,postgresql", help="comma list: sqlite, postgresql")
    parser.add_argument("--batch", type=int, default=500, help="records per group commit at most")
    parser.add_argument("--one-order", action="store_true", help="every call on one order (as bench/load.py)")
    parser.add_argument("--tail", action="store_true", help="as the writer process: lines read from files")
    parser.add_argument("--lines", type=Path, help="real hook records: a bench/hook_cpu.py --store journal "
                        "--dump file, its lines taken in turn with fresh ids")
    parser.add_argument("--smoke", action="store_true", help="200 records, SQLite only")
    args = parser.parse_args()
    kinds = ["sqlite"] if args.smoke else [k.strip() for k in args.db.split(",") if k.strip()]
    records = 200 if args.smoke else args.records
    print(machine_header("bench/writer.py", args.smoke))
    print("| db | records | batch | drain s | records/s | CPU ms/record (writer process) | CPU ms/record "
          "(PostgreSQL backend) | commits | statements/commit | stored | statements |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|")
    for kind in kinds:
        lines = _dumped_lines(args.lines) if args.lines else None
        print(drain(kind, records, args.batch, args.one_order, args.tail, lines), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
