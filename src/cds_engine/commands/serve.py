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
            typer.Option(help="Base URL clients call, when behind a proxy (JWT aud is checked against it)"),
        ] = None,
        cors_origin: Annotated[
            list[str] | None, typer.Option(help="Allowed browser origin (repeatable)")
        ] = None,
        max_body_mb: Annotated[float, typer.Option(help="Largest accepted request body")] = 10.0,
        log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
    ) -> None:
        """Serve CDS Hooks discovery, order-select/order-sign services, feedback and /evaluate."""
        import uvicorn

        from cds_engine.service.app import ServiceSettings, create_app
        from cds_engine.service.auth import AuthSettings

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
            if public_url is None:
                log.warning(
                    "--public-url not set: JWT aud is checked against each request's Host header; "
                    "set it to the URL the EHR calls in production"
                )

        provider = holder

        url = db or os.environ.get("CDS_DATABASE_URL") or DEFAULT_DB
        sink, routers, store = open_sink(url, provider)
        settings = ServiceSettings(
            max_body_bytes=int(max_body_mb * 1024 * 1024),
            cors_origins=tuple(cors_origin) if cors_origin else ("*",),
        )
        service = create_app(provider, sink=sink, auth=auth, extra_routers=routers, settings=settings)
        try:
            uvicorn.run(
                service,
                host=host,
                port=port,
                access_log=False,
                log_level=log_level.lower(),
                proxy_headers=public_url is not None,
            )
        finally:
            holder.stop()
            close = getattr(store, "close", None)
            if close is not None:
                close()
