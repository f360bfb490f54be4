"""In-process CPU of one hook call with auth on: the ASGI app called directly, no sockets (issue 19).

Run: ``python bench/hook_cpu.py [--calls 300] [--same] [--store keep|none|journal] [--dump OUT.json]
[--smoke]``.

Builds the service as ``serve`` does for the load bench (client JWTs checked, ES384; the ``jti``
replay store a SQLite WAL file; a store sink that takes every record without a thread hop, so
silent packs and demographics run as with the journal) and calls the ASGI app in this process with
pre-signed tokens. Bodies: order-sign and order-select calls for Synthea patients with varied
draft orders (the pack's drug at several doses, a partner drug, a draft that references a
``Medication`` carried in the bundle, two drafts); ``--same`` repeats one body (as ``bench/load.py``
does, so memos keyed by the draft always hit).

Prints CPU milliseconds per call (``resource.getrusage``, this process only), and that CPU split by
thread (``/proc/self/task/*/schedstat``, nanoseconds, Linux: the event loop's thread apart from,
e.g., the journal's fsync thread, whose kernel time a store adds to the server). For a noise-free
figure run it under callgrind with ``--marks 5``: it prints ``TIMED-START`` / ``TIMED-END`` and
pauses at each, and ``callgrind_control --dump`` at each mark leaves a profile part holding the
timed calls alone (instructions per call = its total / ``--calls``). ``--dump`` writes every answer
(status, body with card uuids replaced by their order of appearance, response headers with the
Server-Timing durations masked) and every record the sink got (the same), for an old-versus-new
equality check: the clock is fixed, so equal code gives equal files byte for byte. Not a test.
``--store journal`` puts the real journal sink behind the app (the default keeps records only;
``none`` is no store at all): its CPU against ``none`` is what a store costs the server per call,
and ``--dump`` then also holds every journal line (id and ``recorded_at`` masked).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import re
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_common import machine_header, use_repo_paths

use_repo_paths()

from cds_engine.engine import Engine  # noqa: E402
from cds_engine.service import create_app  # noqa: E402
from cds_engine.service.auth import AuthSettings, TrustedIssuer  # noqa: E402
from cds_engine.service.discovery import prefetch_templates  # noqa: E402
from cds_engine.service.replay import ReplaySettings  # noqa: E402
from service_helpers import (  # noqa: E402  (the test helpers build realistic requests)
    LocalFhir,
    Signer,
    hook_request,
    medication_request,
    synthea_files,
    synthea_resources,
)
from suggestion_cases import AS_OF as SUGGESTION_AS_OF  # noqa: E402
from suggestion_cases import generate  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HOST = "bench.local"
AS_OF = SUGGESTION_AS_OF  # the seeded suggestion cases are dated for it
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
TOKEN_SECONDS = 3000
PARTNER = "105029"  # a gabapentinoid product code in the shipped vocabulary (a partner class)


class KeepSink:
    """A store that takes each record at once (like the journal: ``nonblocking``) and keeps it."""

    nonblocking = True

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.records: list[Any] = []

    def record_evaluation(self, record: Any) -> None:
        if self.keep:
            self.records.append(record)

    def __getattr__(self, name: str) -> Any:  # every other sink method: nothing to do
        return lambda *args, **kwargs: None


def _partner(draft: dict[str, Any]) -> dict[str, Any]:
    """The draft ordering a partner-class product instead of the pack's drug."""
    concept = {"coding": [{"system": RXNORM, "code": PARTNER}], "text": "partner product"}
    return {**draft, "medicationCodeableConcept": concept}


def _with_reference(draft: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The draft naming its product through ``medicationReference`` to a Medication in the bundle."""
    concept = draft.pop("medicationCodeableConcept")
    medication = {"resourceType": "Medication", "id": "med-1", "code": concept}
    return {**draft, "medicationReference": {"reference": "Medication/med-1"}}, medication


def corpus(patients: int, cases: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """(service path, body) pairs: several patients, several kinds of draft order each; then
    ``cases`` of the seeded one-click suggestion cases (every renal band, liquids, enteral routes)."""
    pack = Engine.from_dir(REPO / "rules").packs[0]
    templates = prefetch_templates(pack)
    out: list[tuple[str, dict[str, Any]]] = []
    for path in synthea_files(patients):
        resources = synthea_resources(path)
        patient = next(r for r in resources if r["resourceType"] == "Patient")["id"]
        prefetch = LocalFhir(resources).prefetch(templates, {"patientId": patient})
        sign, select = "/cds-services/baclofen-order-sign", "/cds-services/baclofen-order-select"

        def mr(patient: str = patient, **kw: Any) -> dict[str, Any]:
            return medication_request(patient=patient, **kw)

        out.append((sign, hook_request("order-sign", patient, [mr(dose=20, per_day=3)], prefetch=prefetch)))
        out.append((sign, hook_request("order-sign", patient, [mr(dose=5, per_day=3)], prefetch=prefetch)))
        out.append((select, hook_request("order-select", patient, [mr(dose=10, per_day="TID")],
                                         prefetch=prefetch)))
        out.append((sign, hook_request("order-sign", patient, [_partner(mr(dose=300, per_day=3))],
                                       prefetch=prefetch)))
        referenced, medication = _with_reference(mr(dose=10, per_day=3))
        body = hook_request("order-sign", patient, [referenced], prefetch=prefetch)
        body["context"]["draftOrders"]["entry"].append({"resource": medication})
        out.append((sign, body))
        two = [mr(id="mr-1", dose=15, per_day=3), _partner(mr(id="mr-2", dose=100, per_day=3))]
        out.append((sign, hook_request("order-sign", patient, two, prefetch=prefetch)))
    for case in generate(cases, 20261206):
        patient = next(r for r in case.resources if r["resourceType"] == "Patient")["id"]
        prefetch = LocalFhir(case.resources).prefetch(templates, {"patientId": patient})
        out.append(("/cds-services/baclofen-order-sign",
                    hook_request("order-sign", patient, [case.draft], prefetch=prefetch)))
    return out


class JournalKeepSink(KeepSink):
    """The service's real journal sink (``serve --writer process``: an external journal, nobody
    storing the lines here) that also keeps each record and each line it appended (``--dump``)."""

    def __init__(self, keep: bool, directory: Path) -> None:
        from cds_engine.store.journal import Journal
        from cds_engine.store.journal_sink import JournalSink

        super().__init__(keep)
        self.journal = Journal(directory, external=True).start()
        self.lines: list[bytes] = []
        self.journal_sink = JournalSink(None, self.journal, None)  # type: ignore[arg-type]
        append = self.journal.append

        def keeping_append(entry: Any, value: Any = None, line: bytes | None = None) -> Path:
            if self.keep and line is not None:
                self.lines.append(line)
            return append(entry, value, line)

        self.journal.append = keeping_append  # type: ignore[method-assign]

    def record_evaluation(self, record: Any) -> None:
        super().record_evaluation(record)
        self.journal_sink.record_evaluation(record)


def build(tmp: Path, keep: bool, store: str = "keep") -> tuple[Any, Signer, KeepSink]:
    signer = Signer()
    engine = Engine.from_dir(REPO / "rules")
    auth = AuthSettings(
        issuers={signer.issuer: TrustedIssuer(jwks=signer.jwks())},
        replay=ReplaySettings(url=f"sqlite:///{tmp / 'jti-replay.db'}"),
    )
    if store == "none":
        from cds_engine.store.api import NullSink

        sink: Any = NullSink()
    elif store == "journal":
        sink = JournalKeepSink(keep, tmp / "journal")
    else:
        sink = KeepSink(keep)
    app = create_app(lambda: engine, sink=sink, auth=auth, clock=lambda: AS_OF)  # type: ignore[arg-type]
    return app, signer, sink


TIMINGS: dict[str, float] = {}  # Server-Timing step -> summed milliseconds (the service's own split)


HEADERS: list[list[list[str]]] = []  # each answer's response headers (--dump; Server-Timing values masked)


async def call(app: Any, path: str, payload: bytes, token: str) -> tuple[int, bytes]:
    """One POST through the whole ASGI app (middleware, auth, route), as uvicorn would send it."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"host", HOST.encode()), (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80), "state": {},
    }
    sent = False
    status, chunks = 0, []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": payload, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            HEADERS.append([[name.decode("latin-1"), _DURATION.sub("dur=<ms>", value.decode("latin-1"))]
                            for name, value in message.get("headers", [])])
            for name, value in message.get("headers", []):
                if name.lower() == b"server-timing":
                    for part in value.decode().split(","):
                        step, _, dur = part.strip().partition(";dur=")
                        TIMINGS[step] = TIMINGS.get(step, 0.0) + float(dur)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


_DURATION = re.compile(r"dur=[0-9.]+")
_RECORDED_AT = re.compile(rb'"recorded_at":"[^"]*"')
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def thread_cpu() -> dict[str, int]:
    """CPU nanoseconds of each live thread of this process by Python thread name (schedstat: user
    and kernel, finer than the clock ticks of ``/proc/<pid>/stat``); {} where /proc has no such file."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, int] = {}
    for tid in names:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as stat:
                out[names[tid]] = out.get(names[tid], 0) + int(stat.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


def _thread_split(before: dict[str, int], after: dict[str, int], calls: int) -> str:
    """``name ms/call`` for every thread that ran (a thread gone meanwhile is not counted)."""
    parts = [(name, (ns - before.get(name, 0)) / calls / 1e6) for name, ns in after.items()]
    return ", ".join(f"{name} {ms:.3f}" for name, ms in sorted(parts, key=lambda p: -p[1]) if ms >= 0.0005)


def _masked(raw: bytes) -> str:
    """Card and hookInstance uuids replaced by their order of appearance (they are random)."""
    seen: dict[bytes, str] = {}
    return _UUID.sub(lambda m: seen.setdefault(m.group(0), f"<uuid{len(seen)}>").encode(), raw).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="timed calls (after one pass of warm-up)")
    parser.add_argument("--patients", type=int, default=10)
    parser.add_argument("--cases", type=int, default=30, help="seeded one-click cases added to the bodies")
    parser.add_argument("--same", action="store_true", help="one body again and again (as bench/load.py)")
    parser.add_argument("--load-body", action="store_true",
                        help="bench/load.py's body (58 KiB, ASCII) again and again, not the corpus")
    parser.add_argument("--store", choices=("keep", "none", "journal"), default="keep",
                        help="keep: a sink that takes each record (default); none: no store (NullSink: no "
                        "record built, no silent pack); journal: the real journal sink (external journal in "
                        "a temporary directory), its lines added to --dump")
    parser.add_argument("--dump", type=Path, help="write every answer and record here (equality check)")
    parser.add_argument("--profile", type=Path, help="cProfile the timed calls only, stats to this file")
    parser.add_argument("--marks", type=float, default=0.0,
                        help="print TIMED-START/TIMED-END around the timed calls and pause this many seconds "
                        "at each (for callgrind_control --dump; see bench/RESULTS.md)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), figures meaningless")
    args = parser.parse_args()
    if args.smoke:
        args.calls, args.patients, args.cases = 12, 2, 3
    logging.getLogger("cds_engine").setLevel(logging.ERROR)
    print(machine_header("bench/hook_cpu.py", args.smoke))
    bodies = corpus(args.patients, args.cases)
    if args.same:
        bodies = bodies[:1]
    if args.load_body:
        from hook import realistic_body

        bodies = [("/cds-services/baclofen-order-sign", realistic_body()[0])]
    payloads = [(p, json.dumps(b).encode()) for p, b in bodies]
    with tempfile.TemporaryDirectory() as tmp:
        app, signer, sink = build(Path(tmp), keep=args.dump is not None, store=args.store)
        aud = lambda p: f"http://{HOST}{p}"  # noqa: E731
        # tokens live 50 min (the service allows 60): a run under callgrind outlasts the default 5
        warm = [signer.token(aud(p), exp_in=TOKEN_SECONDS) for p, _ in payloads]
        timed = [(payloads[i % len(payloads)],
                  signer.token(aud(payloads[i % len(payloads)][0]), exp_in=TOKEN_SECONDS))
                 for i in range(args.calls)]

        async def run() -> tuple[list[tuple[int, bytes]], list[list[list[str]]], float, float, str]:
            async with app.router.lifespan_context(app):
                answers = [await call(app, p, b, t) for (p, b), t in zip(payloads, warm, strict=True)]
                headers = list(HEADERS)  # the warm-up pass's, compared with --dump
                if isinstance(sink, KeepSink):
                    sink.keep = False  # the warm-up pass's records are the ones compared
                profiler = cProfile.Profile() if args.profile else None
                TIMINGS.clear()
                if args.marks:  # let callgrind_control dump (and reset) the counts before the timed calls
                    print("TIMED-START", flush=True)
                    time.sleep(args.marks)
                threads0 = thread_cpu()
                r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                if profiler is not None:
                    profiler.enable()
                for i, ((p, b), t) in enumerate(timed):
                    status, _ = await call(app, p, b, t)
                    assert status == answers[i % len(answers)][0], (i, status)  # as in the warm-up
                if profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(args.profile)
                r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
                split = _thread_split(threads0, thread_cpu(), max(1, args.calls))
                if args.marks:  # the next dump holds the timed calls only
                    print("TIMED-END", flush=True)
                    time.sleep(args.marks)
            if isinstance(sink, JournalKeepSink):
                sink.journal.close()
            cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            return answers, headers, cpu, wall, split

        answers, headers, cpu, wall, split = asyncio.run(run())
    codes = sorted({s for s, _ in answers})
    kind = "load.py's, repeated" if args.load_body else "one repeated" if args.same else "varied"
    print(f"bodies: {len(payloads)} ({kind}); warm-up answers {codes}")
    if args.calls:
        print(f"timed calls: {args.calls}; CPU {cpu / args.calls * 1000:.3f} ms/call "
              f"(process, all threads); wall {wall / args.calls * 1000:.3f} ms/call")
        if split:
            print(f"CPU by thread (schedstat, ms/call): {split}")
        print("service steps (Server-Timing, wall ms/call): "
              + ", ".join(f"{k} {v / args.calls:.3f}" for k, v in TIMINGS.items()))
    if args.dump is not None:
        records = [_masked(r.model_dump_json().encode()) if hasattr(r, "model_dump_json") else
                   _masked(repr(r).encode()) for r in getattr(sink, "records", [])]
        out = {"answers": [[s, _masked(b)] for s, b in answers], "records": records, "headers": headers}
        if isinstance(sink, JournalKeepSink):  # each line's id and recorded_at are its own: masked
            out["journal"] = [_masked(_RECORDED_AT.sub(b'"recorded_at":"<t>"', line)) for line in sink.lines]
        args.dump.write_text(json.dumps(out, indent=1, sort_keys=True), encoding="utf-8")
        print(f"answers and records written to {args.dump}")


if __name__ == "__main__":
    main()
