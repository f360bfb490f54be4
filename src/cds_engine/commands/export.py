"""``cds-engine export --since DATE --format fhir-ndjson --out FILE``: stored findings as FHIR (wiring only).

Exports shown cards of hook calls and real screenings as DetectedIssue NDJSON for a FHIR server;
suppressed cards only with ``--include-suppressed`` (status preliminary). Hypothetical screenings are
never exported. The file is created 0600 and every export is written to the audit log (who, when,
what window, how many). Exit codes: 0 written (also when the window held no alert — the summary says
how many alerts the window held), 2 usage or store not reachable.
"""

from __future__ import annotations

import getpass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated

import typer

from cds_engine.files import private_open

__all__ = ["register"]

FORMATS = ("fhir-ndjson",)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"[:64]
    except Exception:
        return "cli"


def _day(text: str, option: str) -> datetime:
    try:
        return datetime.combine(date.fromisoformat(text), time.min, tzinfo=UTC)
    except ValueError as exc:
        raise typer.BadParameter(f"{option} must be a date YYYY-MM-DD, not {text!r}") from exc


def register(app: typer.Typer, rules_app: typer.Typer) -> None:
    @app.command()
    def export(
        since: Annotated[str, typer.Option(help="First day (YYYY-MM-DD, UTC) of the evaluations exported")],
        out: Annotated[Path, typer.Option("--out", help="NDJSON file to write (created 0600)")],
        format_: Annotated[str, typer.Option("--format", help="fhir-ndjson (FHIR R4 DetectedIssue)")]
        = "fhir-ndjson",
        until: Annotated[str | None, typer.Option(help="Day after the last one exported (default: none)")]
        = None,
        include_suppressed: Annotated[bool, typer.Option(
            "--include-suppressed", help="Also cards evaluated but not shown (status preliminary)")] = False,
        db: Annotated[str | None, typer.Option(
            "--db", help="Database URL (default: $CDS_DATABASE_URL, else sqlite:///cds.db)")] = None,
        rules: Annotated[Path, typer.Option(help="Rule directory (override reasons → mitigation codes)")]
        = Path("rules"),
    ) -> None:
        """Export findings of real events (hook calls, real screenings) as FHIR DetectedIssue NDJSON."""
        if format_ not in FORMATS:
            typer.echo(f"error: --format must be one of {', '.join(FORMATS)}, not {format_!r}", err=True)
            raise typer.Exit(2)
        start = _day(since, "--since")
        end = _day(until, "--until") if until else None
        if end is not None and end <= start:
            typer.echo("error: --until must be after --since", err=True)
            raise typer.Exit(2)

        from cds_engine.engine import Engine
        from cds_engine.rules.errors import PackLoadError
        from cds_engine.service.review.fhir_export import issues_from_store, reason_index, write_ndjson
        from cds_engine.store import audit, open_store
        from cds_engine.store.db import redact, resolve_url
        from cds_engine.store.issue_export import export_items

        try:
            reasons = reason_index(Engine.from_dir(rules, site=False).packs)
        except (PackLoadError, OSError) as exc:
            typer.echo(f"error: rule packs in {rules} could not be read ({exc})", err=True)
            raise typer.Exit(2) from exc
        store = open_store(db, start_drainer=False)
        try:
            if not store.ready:
                typer.echo(f"error: database {redact(resolve_url(db))} is not reachable", err=True)
                raise typer.Exit(2)
            with store.session() as session, private_open(out, "w", encoding="utf-8") as handle:
                items = export_items(session, start, include_suppressed=include_suppressed, until=end)
                count = write_ndjson(issues_from_store(items, reasons), handle)
                audit.record(session, actor=_actor(), role="cli", action="export.fhir-ndjson",
                             target_type="file", target_id=out.name, detail={
                                 "since": start.date().isoformat(),
                                 "until": end.date().isoformat() if end else None,
                                 "include_suppressed": include_suppressed, "resources": count})
        finally:
            store.close()
        window = f"{start.date()}" + (f" to {(end - timedelta(days=1)).date()}" if end else " onwards")
        typer.echo(f"exported {count} DetectedIssue resource(s) of real events ({window}) to {out}")
