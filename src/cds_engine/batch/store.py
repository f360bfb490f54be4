"""``--store``: record a batch run in the alert store (one evaluation per patient and pack).

The batch tables hold what a reviewer needs (rule, tier, severity, summary, evidence); the
store's alert model is rebuilt from them plus the pack's own metadata (title, sources,
suggestions), so the review pages show batch alerts like hook alerts. Patients with no alert
are recorded too: "screened, nothing found" is part of the audit trail.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from cds_engine.alerts import Alert, AlertSource, AlertSuggestion
from cds_engine.engine import Engine
from cds_engine.messages import render

__all__ = ["alert_from_row", "record_run"]

_BATCH = 500


def alert_from_row(row: dict[str, Any], engine: Engine) -> Alert:
    """A batch alert-table row as the Alert it stands for (pack metadata from the engine's packs)."""
    pack = next(p for p in engine.packs if p.id == row["pack_id"])
    rule = next((r for r in pack.rules if r.spec.id == row["rule_id"]), None)
    info = pack.spec.pack
    return Alert(
        kind=row["kind"],
        rule_id=row["rule_id"],
        tier_id=row["tier_id"],
        title=row["title"],
        category=row["category"],
        severity=row["severity"],
        summary=row["summary"],
        detail=row["summary"],
        evidence=json.loads(row["evidence"] or "{}"),
        missing=[m for m in (row["missing"] or "").split(";") if m],
        not_assessed=[t for t in (row["not_assessed"] or "").split(";") if t],
        suggestions=[AlertSuggestion(**{**s.model_dump(exclude={"tiers"}),
                                        "label": render(s.label, {}, pack.params, {})})
                     for s in rule.spec.suggestions
                     if s.tiers is None or row["tier_id"] in s.tiers] if rule else [],  # fits the tier
        sources=[
            AlertSource(id=s, title=pack.spec.sources[s].title, url=pack.spec.sources[s].url)
            for s in rule.spec.sources
        ]
        if rule
        else [],
        pack_id=info.id,
        pack_version=info.version,
        pack_hash=pack.content_hash,
        pack_url=info.url,
        pack_status=info.status,
        approval=info.approval.status,
        site_hash=row.get("site_hash"),
    )


def record_run(out: Path, summary: dict[str, Any], engine: Engine, url: str | None) -> str:
    """Write the run to the store; returns the batch run id (or why it was not recorded)."""
    try:
        from cds_engine.store.api import EvaluationRecord, IssuedAlert
        from cds_engine.store.models import BatchRun
        from cds_engine.store.store import open_store
    except ImportError as exc:
        return f"not available: {exc}"
    run_id = f"batch-{uuid.uuid4()}"
    as_of = datetime.fromisoformat(summary["as_of"])
    alerts = pl.read_parquet(out / "alerts.parquet")
    by_patient: dict[tuple[str, int | None, str], list[dict[str, Any]]] = {}
    for row in alerts.iter_rows(named=True):
        by_patient.setdefault((row["source"], row["row"], row["pack_id"]), []).append(row)
    packs = {p.id: p for p in engine.packs}
    store = open_store(url, start_drainer=False)
    try:
        records = []
        for p in (
            pl.read_parquet(out / "patients.parquet")
            .filter(pl.col("status") == "screened")
            .iter_rows(named=True)
        ):
            for pack_id in [x for x in (p["packs"] or "").split(";") if x]:
                pack = packs[pack_id]
                rows = by_patient.get((p["source"], p["row"], pack_id), [])
                records.append(
                    EvaluationRecord(
                        source="batch",
                        patient_ref=p["patient_id"],
                        as_of=as_of,
                        pack_id=pack.id,
                        pack_version=pack.version,
                        pack_hash=pack.content_hash,
                        site_hash=engine.site_hash,
                        batch_run_id=run_id,
                        hypothetical=summary["assumed_order"] is not None,
                        alerts=[IssuedAlert(alert=alert_from_row(r, engine)) for r in rows],
                    )
                )
                if len(records) >= _BATCH:
                    store.sink.record_evaluations(records)
                    records = []
        if records:
            store.sink.record_evaluations(records)
        with store.session() as session:
            run = session.get(BatchRun, run_id)
            if run is None:
                run = BatchRun(
                    id=run_id, started_at=datetime.now(UTC), status="running", params={}, counts={}
                )
                session.add(run)
            run.finished_at = datetime.now(UTC)
            run.status = "finished"
            run.description = f"cds-engine screen ({summary['engine']})"
            run.params = {
                "inputs": summary["inputs"],
                "as_of": summary["as_of"],
                "assumed_order": summary["assumed_order"],
                "engine": summary["engine"],
            }
            run.counts = dict(summary["counts"])
    finally:
        store.close()
    return run_id
