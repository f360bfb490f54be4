"""``cds-engine serve``: run the CDS Hooks service with uvicorn.

Storage: ``--db URL`` (else ``CDS_DATABASE_URL``, else ``sqlite:///cds.db``) opens the alert store
when :mod:`cds_engine.store` provides ``open_store``, and mounts its review pages; ``--db none``
keeps nothing. Authentication: ``--trusted-issuers FILE`` (else ``CDS_TRUSTED_ISSUERS``) lists the
EHRs allowed to call and their keys; ``--no-auth`` turns client authentication off for local
trials and says so loudly. ``--workers N`` runs N uvicorn workers, each a complete service
(:mod:`cds_engine.commands.serve_workers`); seen JWT ids are shared through ``--replay-store``.
The store writer (``--writer``, env ``CDS_STORE_WRITER``) runs by default as one writer process per
``serve``, fed by every worker's journal (:mod:`cds_engine.store.writer_process`): the request
processes only append. ``--writer thread`` keeps a writer thread in each worker instead.
``--worker-cpus`` / ``--writer-cpus`` (off by default) keep the serving workers and that writer
process on CPUs of their own (:mod:`cds_engine.cpu_affinity`).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from cds_engine.commands.stop_signal import StopSignal, end_by, raise_stop_signal
from cds_engine.rules.errors import PackLoadError
from cds_engine.service.heap import freeze_startup
from cds_engine.service.reload import EngineHolder

__all__ = ["open_sink", "register", "worker_app"]

log = logging.getLogger("cds_engine.service")

DEFAULT_DB = "sqlite:///cds.db"
WRITER_ENV = "CDS_STORE_WRITER"
WRITER_MODES = ("thread", "process")
DEFAULT_WRITER = "process"  # bench/RESULTS.md: the answer waits less for the store than with a thread
_LOUD = """
********************************************************************************
*  --no-auth: CLIENT AUTHENTICATION IS OFF.                                    *
*  Anyone who can reach this port can send patient data and read advice.       *
*  Use only for local trials with synthetic data.                              *
********************************************************************************"""


def writer_mode(option: str | None) -> str:
    """``--writer``, else ``CDS_STORE_WRITER``, else :data:`DEFAULT_WRITER`; anything else is refused."""
    mode = (option or os.environ.get(WRITER_ENV) or DEFAULT_WRITER).strip().lower()
    if mode not in WRITER_MODES:
        raise typer.BadParameter(f"--writer must be one of {', '.join(WRITER_MODES)} (got {mode!r})")
    return mode


def writer_supervisor(url: str, directory: Path, log: str = "info:text", cpus: str | None = None) -> Any:
    """The host's writer process (not started): run by :mod:`cds_engine.commands.serve_writer`,
    logging as ``serve`` (``log``: ``LEVEL:FORMAT``); ``cpus``: the CPU list it pins itself to
    (:func:`cpu_pinning`; None: the environment's, by default none)."""
    from cds_engine.commands.serve_writer import LOG_ENV, MODULE
    from cds_engine.cpu_affinity import WRITER_CPUS_ENV
    from cds_engine.store.writer_supervisor import WriterSupervisor

    env = {LOG_ENV: log, **({WRITER_CPUS_ENV: cpus} if cpus is not None else {})}
    return WriterSupervisor(url, directory, module=MODULE, env=env)


def cpu_pinning(writer_cpus: str | None, worker_cpus: str | None) -> tuple[frozenset[int] | None, str | None]:
    """(the CPUs every serving worker pins itself to, the CPU list for the writer process), each None
    when not asked; ValueError naming the option for a list that does not parse or names a CPU this
    process may not use. ``--writer-cpus`` falls back to ``CDS_WRITER_CPUS``, which the writer process
    reads: checked here so a bad value stops ``serve`` at start instead of being ignored by the writer."""
    from cds_engine import cpu_affinity

    initial = cpu_affinity.available_cpus()
    from_env = os.environ.get(cpu_affinity.WRITER_CPUS_ENV) if writer_cpus is None else None
    writer_text, writer_name = (writer_cpus, "--writer-cpus") if from_env is None else (
        from_env, f"{cpu_affinity.WRITER_CPUS_ENV} (--writer-cpus)")
    writer = None if writer_text is None else cpu_affinity.check_cpus(writer_text, writer_name, initial)
    worker = None if worker_cpus is None else cpu_affinity.check_cpus(worker_cpus, "--worker-cpus", initial)
    return worker, cpu_affinity.writer_cpus(writer, worker, initial)


def open_sink(db: str, engine_provider: Any, data_dir: Path | None = None,
              clock: Callable[[], datetime] | None = None, *, writer: str | None = None,
              own_writer: bool = True, log_as: str = "info:text",
              writer_cpus: str | None = None) -> tuple[Any, list[Any], Any]:
    """(sink, extra routers, store or None) for ``--db``; NullSink when storage is off or unavailable.

    The journal and spool go to ``CDS_SPOOL_DIR``; else beside a SQLite file; else, with
    ``--data-dir``, to ``DATA_DIR/cds-spool`` (not ``./cds-spool`` in whatever directory serve started).
    ``clock`` (``--fixed-clock``): the store purges the fatigue rows by the clock that stamped them.
    ``writer`` (:func:`writer_mode`): ``thread`` — a writer thread in this process; ``process`` —
    this process only appends to its journal, and (``own_writer``) starts the writer process, which
    ``store.close()`` stops; a ``--workers N`` worker does not (the supervising parent runs it).
    ``writer_cpus``: the writer process's CPU list (:func:`cpu_pinning`)."""
    from cds_engine.store.api import NullSink

    if db.strip().lower() == "none":
        return NullSink(), [], None
    try:
        from cds_engine.store import open_store  # type: ignore[attr-defined]
    except ImportError:
        log.warning("the alert store is not available in this build: evaluations are NOT stored")
        return NullSink(), [], None
    from cds_engine.service.review.router import build_router

    # journal: the answer never waits for the database; one writer group-commits (issue 19)
    spool_dir = None
    if data_dir is not None and not os.environ.get("CDS_SPOOL_DIR") and not db.startswith("sqlite"):
        spool_dir = data_dir / "cds-spool"
    if writer_mode(writer) == "process":
        from cds_engine.store.writer_supervisor import attach_external_journal

        store = open_store(db, journal=False, spool_dir=spool_dir, **({"clock": clock} if clock else {}))
        supervisor = (writer_supervisor(store.url, store.spool.directory, log_as, writer_cpus)
                      if own_writer else None)
        if supervisor is not None:
            supervisor.start()
        attach_external_journal(store, supervisor)
        return store.sink, [build_router(store, engine_provider)], store
    store = open_store(db, journal=True, spool_dir=spool_dir, **({"clock": clock} if clock else {}))
    # That writer releases the GIL on every database call and, while request threads are busy, waits
    # a whole switch interval (default 5 ms) to get it back each time: under load its lines queued
    # for seconds (bench/load.py write lag). 1 ms hands it back sooner, for a few more switches.
    sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
    # The store knows no web layer: the service mounts the review pages over the store it opened.
    return store.sink, [build_router(store, engine_provider)], store


def worker_app() -> Any:
    """uvicorn's application factory in each ``serve --workers N`` worker (see ``serve_workers``)."""
    from cds_engine.commands.serve_workers import run_in_worker

    app = typer.Typer()
    register(app, typer.Typer())  # the serve command alone (the CLI module sits above this package)
    return run_in_worker(typer.main.get_command(app))


def replay_clock(instant: str | None) -> dict[str, Any]:
    """``{"clock": ...}`` fixed at ``instant`` (replaying captured requests at their date), else ``{}``."""
    if instant is None:
        return {}
    from datetime import datetime

    fixed = datetime.fromisoformat(instant)
    if fixed.tzinfo is None:
        raise typer.BadParameter("--fixed-clock needs a timezone, e.g. 2026-12-05T21:00:00+00:00")
    log.warning("FIXED CLOCK: every evaluation is as of %s (replay/tests only)", fixed.isoformat())
    return {"clock": lambda: fixed}


def _scoped_metrics_dir(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with the Prometheus multiprocess directory it sets for its children undone when
    it returns: ``serve`` run in-process (a test runner) must not leave ``PROMETHEUS_MULTIPROC_DIR``
    behind, or a later ``serve`` child inherits it and sums this one's stale metric files."""

    @functools.wraps(command)
    def run(**options: Any) -> None:
        from cds_engine import metrics

        before = os.environ.get(metrics.MULTIPROC_ENV)
        stopped: StopSignal | None = None
        try:
            command(**options)
        except StopSignal as exc:
            stopped = exc
        finally:
            made = os.environ.get(metrics.MULTIPROC_ENV)
            if made and made != before:
                metrics.leave_multiprocess(made)
        if stopped is not None:  # everything is cleaned up: now end the way the signal asked
            end_by(stopped)

    return run


@contextmanager
def _cleanup_before_sigterm() -> Iterator[None]:
    """While uvicorn runs: a SIGTERM that ends it is turned into
    :class:`~cds_engine.commands.stop_signal.StopSignal` (see there).

    Only where the default action would kill the process (the main thread, no handler of the
    embedding program's installed); the previous handler is put back afterwards."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    signal.signal(signal.SIGTERM, raise_stop_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def register(app: typer.Typer, rules_app: typer.Typer) -> None:
    @app.command()
    @_scoped_metrics_dir
    def serve(
        host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="TCP port")] = 8080,
        rules: Annotated[Path, typer.Option(help="Rule directory")] = Path("rules"),
        db: Annotated[
            str | None,
            typer.Option(
                help="Database URL, or 'none' to keep nothing (env CDS_DATABASE_URL; default sqlite:///cds.db)"
            ),
        ] = None,
        trusted_issuers: Annotated[
            Path | None,
            typer.Option(
                help="JSON/YAML file: allowed JWT issuers and their JWK Sets (env CDS_TRUSTED_ISSUERS)"
            ),
        ] = None,
        no_auth: Annotated[
            bool, typer.Option("--no-auth", help="Accept calls without a JWT (local trials only)")
        ] = False,
        public_url: Annotated[
            str | None,
            typer.Option(
                help="The exact base URL clients call (JWT aud must equal it + the path); "
                "required with authentication on"
            ),
        ] = None,
        forwarded_allow_ips: Annotated[
            str | None,
            typer.Option(
                help="Comma-separated proxy addresses whose X-Forwarded-For/-Proto are trusted "
                "(env FORWARDED_ALLOW_IPS; default 127.0.0.1); the client address of others is the peer"
            ),
        ] = None,
        cors_origin: Annotated[
            list[str] | None, typer.Option(help="Allowed browser origin (repeatable)")
        ] = None,
        max_body_mb: Annotated[float, typer.Option(help="Largest accepted request body")] = 10.0,
        keep_alive: Annotated[
            float,
            typer.Option(
                min=1, max=300,
                help="Seconds an idle connection is kept open. Clients and proxies must close theirs "
                "sooner (a request sent as the server closes is reset): behind a load balancer whose "
                "idle timeout is longer, set this above it",
            ),
        ] = 5.0,
        log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
        allow_loopback_fhir: Annotated[
            bool,
            typer.Option(
                "--allow-loopback-fhir",
                help="Allow plain-http FHIR call-backs to http://127.0.0.1:<port> (local trials only)",
            ),
        ] = False,
        fixed_clock: Annotated[
            str | None,
            typer.Option(hidden=True, help="Evaluate at this ISO instant (replaying captured requests)"),
        ] = None,
        no_demographics: Annotated[
            bool,
            typer.Option(
                "--no-demographics",
                help="Keep no patient name, birth date or MRN (the review page shows the reference only); "
                "deletes those already stored",
            ),
        ] = False,
        demographics_retention_days: Annotated[
            int,
            typer.Option(min=0, help="Forget who a patient is this many days after their last alert closed"),
        ] = 365,
        workers: Annotated[
            int, typer.Option(min=1, max=64, help="uvicorn worker processes (each loads, hot-reloads packs)")
        ] = 1,
        data_dir: Annotated[
            Path | None,
            typer.Option(help="Directory for the service's own files, e.g. the jti replay store "
                         "(env CDS_DATA_DIR; default: the working directory)"),
        ] = None,
        replay_store: Annotated[
            str | None,
            typer.Option(help="Where seen JWT ids are kept: sqlite:///FILE (one host's workers) or "
                         "postgresql://… (several hosts) (env CDS_REPLAY_STORE; default "
                         "sqlite:///DATA_DIR/jti-replay.db)"),
        ] = None,
        replay_timeout_ms: Annotated[
            float, typer.Option(min=1, help="Deadline of a replay check; then --jti-on-store-failure applies")
        ] = 50.0,
        jti_on_store_failure: Annotated[
            str,
            typer.Option(help="per-process (check this worker's own cache; ERROR log and a /healthz counter) "
                         "or refuse (401)"),
        ] = "per-process",
        jti_quota: Annotated[
            int, typer.Option(min=1, help="Live JWT ids kept per issuer; past it new tokens are refused")
        ] = 100_000,
        metrics_port: Annotated[
            int | None,
            typer.Option(min=1, max=65535, help="Prometheus /metrics on this port of 127.0.0.1 only"),
        ] = None,
        metrics_token_file: Annotated[
            Path | None,
            typer.Option(help="GET /metrics on the service port for 'Authorization: Bearer <token>' "
                         "(the token: one word of 32+ characters in FILE)"),
        ] = None,
        log_format: Annotated[str, typer.Option(help="text or json (one JSON object per line)")] = "text",
        writer: Annotated[
            str | None,
            typer.Option(help="Where the store writer runs: process (one process per serve, reading "
                         "every worker's journal; env CDS_WRITER_NICE lowers its priority) or thread "
                         "(in each worker) (env CDS_STORE_WRITER; default process)"),
        ] = None,
        writer_cpus: Annotated[
            str | None,
            typer.Option(help="Pin the writer process to these CPUs, e.g. 1 or 2-3 (env CDS_WRITER_CPUS; "
                         "default: not pinned). With --worker-cpus on other CPUs the store takes no CPU "
                         "time from the answers (a host with spare cores)"),
        ] = None,
        worker_cpus: Annotated[
            str | None,
            typer.Option(help="Pin every serving worker to these CPUs, e.g. 0 or 0,2-3 (default: not "
                         "pinned)"),
        ] = None,
    ) -> None:
        """Serve CDS Hooks discovery, order-select/order-sign services, feedback and /evaluate."""
        params = dict(locals())  # every option as given: --workers N runs serve with them in each worker
        import uvicorn

        from cds_engine.commands.serve_workers import hand_off
        from cds_engine.files import restrict_umask
        from cds_engine.service.app import ServiceSettings, create_app
        from cds_engine.service.auth import AuthSettings
        from cds_engine.service.http_limits import bounded_protocol
        from cds_engine.service.replay import FAILURE_POLICIES, ReplaySettings
        from cds_engine.service.replay_store import open_replay_store

        restrict_umask()  # database, spool and rejected rows: 0600 files in 0700 directories

        from cds_engine import metrics
        from cds_engine.commands.serve_workers import PARAMS_ENV
        from cds_engine.service.log_format import configure_logging
        from cds_engine.service.metrics_http import metrics_router, read_token, start_metrics_port

        try:
            configure_logging(log_level, log_format)
            metrics_token = read_token(metrics_token_file) if metrics_token_file else None
        except (OSError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        in_worker = bool(os.environ.get(PARAMS_ENV))  # a worker of --workers N gets the parent's options
        try:
            store_writer = writer_mode(writer)
            pinned_workers, pinned_writer = cpu_pinning(writer_cpus, worker_cpus)
        except (typer.BadParameter, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        url = db or os.environ.get("CDS_DATABASE_URL") or DEFAULT_DB
        writer_process = store_writer == "process" and url.strip().lower() != "none"
        if writer_cpus is not None and not writer_process and not in_worker:
            log.warning("--writer-cpus ignored: no writer process (--writer thread or --db none)")
        if pinned_workers is not None and (in_worker or workers <= 1):
            from cds_engine.cpu_affinity import pin_process

            pin_process(pinned_workers, "serve worker")  # before any thread starts (they inherit it)
        # the writer process's journal depth and write lag reach /metrics through the same files
        if (workers > 1 or writer_process) and not in_worker and not os.environ.get(metrics.MULTIPROC_ENV):
            import tempfile

            # prometheus-client multiprocess mode: every worker writes its values here, a scrape sums them
            os.environ[metrics.MULTIPROC_ENV] = tempfile.mkdtemp(prefix="cds-metrics-")
        try:
            # hot reload: file changes and SIGHUP swap in a verified new engine; a broken pack is refused
            holder = EngineHolder(rules).start()
        except PackLoadError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from exc
        holder.install_sighup()

        auth = None
        issuers = Path(trusted_issuers) if trusted_issuers else (  # a str in a --workers worker
            Path(os.environ["CDS_TRUSTED_ISSUERS"]) if os.environ.get("CDS_TRUSTED_ISSUERS") else None
        )
        if no_auth:
            log.warning(_LOUD)
        elif issuers is None:
            typer.echo(
                "Give --trusted-issuers FILE (who may call, with their keys) or --no-auth for a local trial.",
                err=True,
            )
            raise typer.Exit(2)
        else:
            if jti_on_store_failure not in FAILURE_POLICIES:
                typer.echo(f"--jti-on-store-failure must be one of {', '.join(FAILURE_POLICIES)}", err=True)
                raise typer.Exit(2)
            home = Path(data_dir or os.environ.get("CDS_DATA_DIR") or ".")
            replay = ReplaySettings(
                url=replay_store
                or os.environ.get("CDS_REPLAY_STORE")
                or f"sqlite:///{home / 'jti-replay.db'}",
                timeout_seconds=replay_timeout_ms / 1000,
                on_store_failure=jti_on_store_failure,  # type: ignore[arg-type]
                quota_per_issuer=jti_quota,
            )
            try:  # unreachable or misnamed at start: refuse to start rather than run unprotected
                open_replay_store(replay.url or "").close()
            except Exception as exc:
                typer.echo(f"--replay-store: cannot open it ({type(exc).__name__}: {exc})", err=True)
                raise typer.Exit(2) from exc
            try:
                auth = AuthSettings.from_file(issuers, public_base_url=public_url, replay=replay)
            except (OSError, ValueError) as exc:
                typer.echo(f"{issuers}: {exc}", err=True)
                raise typer.Exit(2) from exc
            if public_url is None:  # aud bound to a Host header the caller chooses (red-team L8)
                typer.echo(
                    "Give --public-url URL (the exact base URL the EHR calls): with authentication on, "
                    "every token's aud is checked against it.",
                    err=True,
                )
                raise typer.Exit(2)

        provider = holder

        home_dir = data_dir or os.environ.get("CDS_DATA_DIR")
        clock = replay_clock(fixed_clock)
        sink, routers, store = open_sink(url, provider, Path(home_dir) if home_dir else None,
                                         clock=clock.get("clock"), writer=store_writer,
                                         own_writer=workers <= 1 and not in_worker,
                                         log_as=f"{log_level}:{log_format}", writer_cpus=pinned_writer)
        if metrics_token is not None:
            routers = [*routers, metrics_router(metrics_token)]
        if store is not None:
            store.demographics_retention_days = demographics_retention_days
            if no_demographics and store.ready:
                deleted = store.forget_all_demographics()
                log.info("--no-demographics: %d stored patient row(s) deleted", deleted)
        settings = ServiceSettings(
            max_body_bytes=int(max_body_mb * 1024 * 1024),
            cors_origins=tuple(cors_origin) if cors_origin else ("*",),
            allow_loopback_fhir=allow_loopback_fhir,
            demographics=not no_demographics,
        )
        fatigue = None  # shown-once and repeat-suppression state: in the store, shared by every worker
        if store is not None and getattr(store, "engine", None) is not None:
            from cds_engine.store.fatigue import FatigueStore

            fatigue = FatigueStore(store.engine, available=lambda: bool(store.sink.available))
        service = create_app(
            provider, sink=sink, auth=auth, extra_routers=routers, settings=settings, fatigue=fatigue, **clock
        )
        proxies = forwarded_allow_ips or os.environ.get("FORWARDED_ALLOW_IPS") or "127.0.0.1"
        options: dict[str, Any] = {
            "host": host,
            "port": port,
            "access_log": False,
            "log_level": log_level.lower(),
            "proxy_headers": public_url is not None,
            # X-Forwarded-For/-Proto only from these peers (the review sign-in throttle keys on it)
            "forwarded_allow_ips": proxies,
            "timeout_keep_alive": keep_alive,
        }

        def release() -> None:
            holder.stop()  # (--workers N: the supervisor takes SIGHUP over in the parent)
            verifier = getattr(service.state, "jwt_verifier", None)
            if verifier is not None:
                verifier.close()
            close = getattr(store, "close", None)
            if close is not None:
                close()

        if metrics_port is not None and not in_worker:  # one listener: the process, or the parent of N
            try:
                start_metrics_port(metrics_port)
            except OSError as exc:
                typer.echo(f"error: --metrics-port {metrics_port}: {exc}", err=True)
                release()
                raise typer.Exit(2) from exc
        host_writer = None  # --workers N --writer process: the parent runs the host's one writer
        if store_writer == "process" and workers > 1 and not in_worker and getattr(store, "spool", None):
            log_as = f"{log_level}:{log_format}"
            host_writer = writer_supervisor(store.url, store.spool.directory, log_as, pinned_writer).start()
        try:
            if hand_off(service, workers=workers, params=params, uvicorn_options=options, release=release):
                return  # a worker (uvicorn serves what it built) or the parent of --workers N (supervised)
        finally:
            if host_writer is not None:
                host_writer.stop()
        try:
            # httptools with 64 KiB / 10 s header bounds (431 / 408)
            with _cleanup_before_sigterm():  # release() and the metrics directory, then SIGTERM
                # one process: start-up's objects (packs compiled) out of the collector's passes, as in
                # every worker of --workers N (cds_engine.service.heap: a full pass held the GIL ~0.1 s)
                freeze_startup()
                uvicorn.run(service, http=bounded_protocol(), **options)
        finally:
            release()
