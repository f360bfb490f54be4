"""``cds-engine screen INPUT... --out DIR``: batch screening of patient lists (wiring only).

The work is in :mod:`cds_engine.batch`; this module turns options into
:class:`~cds_engine.batch.runner.ScreenOptions` and the result into a short summary and the
documented exit code (0 all screened, 1 records rejected, 2 cannot start, 3 failed part way).
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Annotated

import typer

from cds_engine.batch.outputs import FILES
from cds_engine.batch.runner import (
    DEFAULT_CHUNK_ROWS,
    EXIT_FAILED,
    EXIT_USAGE,
    ScreenError,
    ScreenOptions,
    run_screen,
)

__all__ = ["register"]


def register(app: typer.Typer, rules_app: typer.Typer) -> None:
    @app.command()
    def screen(
        inputs: Annotated[
            list[Path], typer.Argument(help="Files or folders: FHIR bundles, Bulk NDJSON, CSV/Parquet")
        ],
        out: Annotated[Path, typer.Option("--out", help="Output directory")],
        engine: Annotated[str, typer.Option(help="vector (polars) or rete (durable_rules)")] = "vector",
        assume_order: Annotated[
            str | None,
            typer.Option(
                "--assume-order",
                help='Add this hypothetical order to every patient, e.g. "<drug> 5 mg PO TID"',
            ),
        ] = None,
        as_of: Annotated[
            str | None, typer.Option(help="Evaluate as of this ISO date/time (default: now, UTC)")
        ] = None,
        workers: Annotated[int, typer.Option(min=1, help="Local worker processes")] = 1,
        dask: Annotated[
            str | None,
            typer.Option(help="Dask scheduler address (tcp://host:8786), or 'local[:N]' for a local cluster"),
        ] = None,
        store: Annotated[bool, typer.Option("--store", help="Record the run in the alert store")] = False,
        db: Annotated[
            str | None, typer.Option(help="Store URL for --store (default: CDS_DATABASE_URL)")
        ] = None,
        rules: Annotated[Path, typer.Option(help="Rule directory")] = Path("rules"),
        chunk_rows: Annotated[int, typer.Option(min=1, help="Table rows per chunk")] = DEFAULT_CHUNK_ROWS,
        chunk_bundles: Annotated[int, typer.Option(min=1, help="Bundles per chunk")] = 500,
        progress: Annotated[
            bool | None,
            typer.Option("--progress/--no-progress", help="Progress bar (default: on a terminal only)"),
        ] = None,
        formats: Annotated[
            list[str] | None,
            typer.Option(
                "--format",
                help="Alert table to write, repeatable: parquet, csv (default both), "
                "fhir-ndjson (FHIR DetectedIssue; refused with --assume-order)",
            ),
        ] = None,
    ) -> None:
        """Screen patient lists against the rule packs; alerts, patients, errors and a report go to --out."""
        options = ScreenOptions(
            inputs=list(inputs),
            out=out,
            engine=engine,
            assume_order=assume_order,
            as_of=as_of,
            workers=workers,
            dask=dask,
            store=store,
            store_url=db,
            rules=rules,
            rows_per_chunk=chunk_rows,
            bundles_per_chunk=chunk_bundles,
            progress=progress,
            formats=tuple(formats or ("parquet", "csv")),
        )
        try:
            result = run_screen(options)
        except ScreenError as exc:
            typer.echo(f"cds-engine screen: {exc}", err=True)
            raise typer.Exit(EXIT_USAGE) from exc
        except Exception as exc:
            traceback.print_exc()
            typer.echo(
                f"cds-engine screen: failed ({exc}); finished chunks are kept in {out}/.parts — rerun to "
                "resume",
                err=True,
            )
            raise typer.Exit(EXIT_FAILED) from exc
        c = result.summary["counts"]
        evaluated = result.summary.get("evaluated_patients", 0)
        typer.echo(
            f"read {c['read']} = screened {c['screened']} + rejected {c['rejected']} + deceased "
            f"{c['deceased']} ({'balanced' if result.summary['reconciled'] else 'NOT BALANCED'}); "
            f"{c['alerts']} alerts for the {evaluated} patient(s) a pack reviewed; "
            f"{c['skipped']} files skipped; {result.summary['seconds']:.1f} s"
        )
        if c["screened"] and not evaluated:  # "0 alerts" must not read as an all-clear
            typer.echo(
                "note: no pack applied to any screened patient (none has an order or active therapy a "
                "pack reviews): nothing was evaluated — to ask 'what if they were started on it', use "
                "--assume-order",
                err=True,
            )
        for note in result.summary.get("assumed_order_notes", []):
            typer.echo(f"note: {note}", err=True)
        if result.summary.get("store"):
            typer.echo(f"store: {result.summary['store']}")
        tables = ", ".join(FILES[f] for f in options.formats)
        typer.echo(f"outputs in {out}/ (report.html, {tables}, patients.parquet, errors.csv)")
        raise typer.Exit(result.exit_code)
