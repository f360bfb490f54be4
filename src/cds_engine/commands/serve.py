"""``cds-engine serve``: run the CDS Hooks service with uvicorn.

Storage: ``--db URL`` (else ``CDS_DATABASE_URL``, else ``sqlite:///cds.db``) opens the alert store
when :mod:`cds_engine.store` provides ``open_store``, and mounts its review pages; ``--db none``
keeps nothing. Authentication: ``--trusted-issuers FILE`` (else ``CDS_TRUSTED_ISSUERS``) lists the
EHRs allowed to call and their keys; ``--no-auth`` turns client authentication off for local
trials and says so loudly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from cds_engine.rules.errors import PackLoadError
from cds_engine.rules.reload import EngineHolder

__all__ = ["open_sink", "register"]

log = logging.getLogger("cds_engine.service")

DEFAULT_DB = "sqlite:///cds.db"
_LOUD = """
********************************************************************************
*  --no-auth: CLIENT AUTHENTICATION IS OFF.                                    *
*  Anyone who can reach this port can send patient data and read advice.       *
*  Use only for local trials with synthetic data.                              *
********************************************************************************"""


def open_sink(db: str, engine_provider: Any) -> tuple[Any, list[Any], Any]:
    """(sink, extra routers, store or None) for ``--db``; NullSink when storage is off or unavailable."""
    from cds_engine.store.api import NullSink

    if db.strip().lower() == "none":
        return NullSink(), [], None
    try:
        from cds_engine.store import open_store  # type: ignore[attr-defined]
    except ImportError:
        log.warning("the alert store is not available in this build: evaluations are NOT stored")
        return NullSink(), [], None
    store = open_store(db)
    routers = []
    review = getattr(store, "review_router", None)
    if review is not None:
        try:
            routers.append(review(engine_provider))
        except TypeError:
            routers.append(review())
    return store.sink, routers, store


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


def register(app: typer.Typer, rules_app: typer.Typer) -> None:
    @app.command()
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
    ) -> None:
        """Serve CDS Hooks discovery, order-select/order-sign services, feedback and /evaluate."""
        import uvicorn

        from cds_engine.files import restrict_umask
        from cds_engine.service.app import ServiceSettings, create_app
        from cds_engine.service.auth import AuthSettings
        from cds_engine.service.http_limits import KEEP_ALIVE_SECONDS, bounded_protocol

        restrict_umask()  # database, spool and rejected rows: 0600 files in 0700 directories

        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            # hot reload: file changes and SIGHUP swap in a verified new engine; a broken pack is refused
            holder = EngineHolder(rules).start()
        except PackLoadError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from exc
        holder.install_sighup()

        auth = None
        issuers = trusted_issuers or (
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
            try:
                auth = AuthSettings.from_file(issuers, public_base_url=public_url)
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

        url = db or os.environ.get("CDS_DATABASE_URL") or DEFAULT_DB
        sink, routers, store = open_sink(url, provider)
        settings = ServiceSettings(
            max_body_bytes=int(max_body_mb * 1024 * 1024),
            cors_origins=tuple(cors_origin) if cors_origin else ("*",),
            allow_loopback_fhir=allow_loopback_fhir,
        )
        clock = replay_clock(fixed_clock)
        service = create_app(
            provider, sink=sink, auth=auth, extra_routers=routers, settings=settings, **clock
        )
        proxies = forwarded_allow_ips or os.environ.get("FORWARDED_ALLOW_IPS") or "127.0.0.1"
        try:
            uvicorn.run(
                service,
                host=host,
                port=port,
                access_log=False,
                log_level=log_level.lower(),
                proxy_headers=public_url is not None,
                # X-Forwarded-For/-Proto only from these peers (the review sign-in throttle keys on it)
                forwarded_allow_ips=proxies,
                http=bounded_protocol(),  # httptools with 64 KiB / 10 s header bounds (431 / 408)
                timeout_keep_alive=KEEP_ALIVE_SECONDS,
            )
        finally:
            holder.stop()
            close = getattr(store, "close", None)
            if close is not None:
                close()
