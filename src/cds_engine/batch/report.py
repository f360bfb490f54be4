"""``report.html``: one self-contained page a pharmacist can open offline.

Counts by rule and severity, the patients with the most serious alerts, a bar chart drawn as
inline SVG (no script, no external asset), what was skipped or rejected and why, and the
reconciliation "read = screened + rejected + deceased-excluded" stated with its numbers.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

__all__ = ["errors_total", "file_label", "render_report", "rule_counts", "top_patients"]

_COLORS = {"critical": "#b3261e", "warning": "#b26a00", "info": "#1f6fb2"}
_SEVERITIES = ("critical", "warning", "info")


def rule_counts(alerts: Path, tallies: Iterable[Sequence[Any]] | None = None) -> pl.DataFrame:
    """Alerts per (rule, tier kind) with one column per severity, most alerts first.

    ``tallies``: ``[rule_id, title, severity, alerts]`` rows counted per chunk by the workers
    (each alert is in one chunk, so their sums are the run's counts). Why: grouping the whole
    ``alerts.parquet`` again held every alert's rule and title in memory at once — the peak of a
    5 M-patient run (and its distinct-patient count per rule, never shown, 2.55 GB alone; issue 20
    item 5). Without tallies (a table from elsewhere) the file is grouped as before.
    """
    if tallies is not None:
        counts = (
            pl.DataFrame(
                [list(t) for t in tallies],
                schema={"rule_id": pl.String, "title": pl.String, "severity": pl.String, "n": pl.Int64},
                orient="row",
            )
            .group_by("rule_id", "title", "severity")
            .agg(pl.col("n").sum().cast(pl.UInt32))
        )
    else:
        counts = (
            pl.scan_parquet(alerts)
            .select("rule_id", "title", "severity")
            .group_by("rule_id", "title", "severity")
            .agg(pl.len().alias("n"))
            .collect(engine="streaming")
        )
    if counts.height == 0:
        return pl.DataFrame(
            schema={
                "rule_id": pl.String,
                "title": pl.String,
                **dict.fromkeys(_SEVERITIES, pl.UInt32),
                "total": pl.UInt32,
            }
        )
    wide = counts.pivot(on="severity", index=["rule_id", "title"], values="n", aggregate_function="sum")
    for s in _SEVERITIES:
        if s not in wide.columns:
            wide = wide.with_columns(pl.lit(0, pl.UInt32).alias(s))
    wide = wide.with_columns([pl.col(s).fill_null(0) for s in _SEVERITIES])
    # the title last: one rule's tier kinds (e.g. two missing-data rows) can tie on every count, and
    # the pivot's row order is not fixed — the same screening must give the same page every time
    return wide.with_columns(pl.sum_horizontal(_SEVERITIES).alias("total")).sort(
        ["critical", "warning", "total", "rule_id", "title"], descending=[True, True, True, False, False]
    )


_TOP_COLUMNS = ["patient_id", "critical", "warning", "info", "cannot_assess", "alerts", "source"]


def top_patients(patients: Path, n: int = 20) -> pl.DataFrame:
    """The ``n`` patients with the most serious alerts; only the columns the report shows are read.

    Why the streaming engine: there the sort and head become one top-``n`` pass over the file's
    batches. The in-memory engine read every alerted patient's row at once at the very end of the
    run, on top of the pages the last chunks had just freed: the peak RSS of a 5 M-patient screening
    (1,136–1,256 MB against 1,052–1,095 MB streamed, three runs each; issue 20 item 5).
    """
    return (
        pl.scan_parquet(patients)
        .select(_TOP_COLUMNS)
        .filter(pl.col("alerts") > 0)
        .sort(["critical", "warning", "alerts", "patient_id"], descending=[True, True, True, False])
        .head(n)
        .collect(engine="streaming")
    )


def errors_total(out: Path) -> int:
    path = out / "errors.csv"
    return pl.scan_csv(path, infer_schema=False).select(pl.len()).collect().item() if path.exists() else 0


def _svg_chart(counts: pl.DataFrame, limit: int = 20) -> str:
    rows = counts.head(limit).to_dicts()
    if not rows:
        return "<p>No alerts.</p>"
    bar_h, gap, label_w, width = 18, 6, 170, 520
    top = max(r["total"] for r in rows) or 1
    height = len(rows) * (bar_h + gap) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{label_w + width + 60}" '
        f'height="{height}" aria-label="Alerts by rule and severity">'
    ]
    for i, r in enumerate(rows):
        y = i * (bar_h + gap) + 4
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_h - 5}" text-anchor="end" font-size="12">'
            f"{html.escape(r['rule_id'])}</text>"
        )
        x = float(label_w)
        for s in _SEVERITIES:
            w = width * r[s] / top
            if w > 0:
                parts.append(
                    f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{_COLORS[s]}">'
                    f"<title>{html.escape(r['rule_id'])} {s}: {r[s]}</title></rect>"
                )
                x += w
        parts.append(f'<text x="{x + 4:.1f}" y="{y + bar_h - 5}" font-size="12">{r["total"]}</text>')
    legend_y = len(rows) * (bar_h + gap) + 20
    for j, s in enumerate(_SEVERITIES):
        parts.append(
            f'<rect x="{label_w + j * 110}" y="{legend_y - 10}" width="12" height="12" fill="{_COLORS[s]}"/>'
            f'<text x="{label_w + j * 110 + 16}" y="{legend_y}" font-size="12">{s}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(frame: pl.DataFrame, columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in frame.select(columns).iter_rows():
        body.append(
            "<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row) + "</tr>"
        )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def file_label(path: str) -> str:
    """A file as the report names it: a short hash, never its path (Synthea file names are patient
    names). ``summary.json`` (0600, beside the report) keeps the paths for the operator."""
    return "file " + hashlib.sha256(str(path).encode()).hexdigest()[:12]


def _without_paths(frame: pl.DataFrame) -> pl.DataFrame:
    if "source" not in frame.columns or frame.height == 0:
        return frame
    return frame.with_columns(
        pl.col("source").map_elements(file_label, return_dtype=pl.String, skip_nulls=True)
    )


def render_report(
    out: Path, summary: dict[str, Any], rule_tallies: Iterable[Sequence[Any]] | None = None
) -> str:
    """The HTML page for a finished run in ``out`` (reads the merged outputs); no file paths.

    ``rule_tallies``: the chunks' alert counts per rule (see :func:`rule_counts`)."""
    c = summary["counts"]
    counts = rule_counts(out / "alerts.parquet", rule_tallies)
    top = _without_paths(top_patients(out / "patients.parquet"))
    errors = _without_paths(
        pl.read_csv(out / "errors.csv", infer_schema=False, n_rows=200)
        if (out / "errors.csv").exists()
        else pl.DataFrame()
    )
    rejected = errors_total(out)
    balanced = c["read"] == c["screened"] + c["rejected"] + c["deceased"]
    severity_totals = {s: int(counts[s].sum()) if counts.height else 0 for s in _SEVERITIES}
    e = html.escape
    skipped = summary.get("skipped", [])
    ignored = summary.get("ignored_columns", {})
    sections = [
        f"<h1>Batch screening report</h1><p class=meta>{e(summary['finished'])}"
        f" · engine <b>{e(summary['engine'])}</b> ({e(summary['executor'])})"
        f" · as of <b>{e(summary['as_of'])}</b> · {summary['seconds']:.1f} s"
        f" ({summary['rate']:.0f} records/s)</p>",
        "<h2>Packs</h2><ul>"
        + "".join(
            f"<li>{e(p['id'])} {e(p['version'])} ({e(p['status'])}, "
            f"hash <code>{e(p['hash'][:12])}</code>)</li>"
            for p in summary["packs"]
        )
        + "</ul>",
        f"<p>Assumed order: <b>{e(summary['assumed_order'] or 'none — current orders screened')}</b></p>",
        "<h2>Reconciliation</h2>"
        f"<p class={'ok' if balanced else 'bad'}>Records read <b>{c['read']}</b>"
        f" = screened <b>{c['screened']}</b>"
        f" + rejected <b>{c['rejected']}</b> + deceased (excluded) <b>{c['deceased']}</b>"
        f" — {'balanced' if balanced else 'DOES NOT BALANCE'}.</p>"
        f"<p>{c['skipped']} file(s) skipped (not patient data). Patients a pack reviewed: "
        f"<b>{summary.get('evaluated_patients', 0)}</b> of {c['screened']} screened"
        + ("" if summary.get("evaluated_patients", 0) else
           " — <b class=bad>nothing was evaluated</b>: no alert here is not an all-clear")
        + f". Alerts: <b>{c['alerts']}</b> "
        + " · ".join(f"{s} {severity_totals[s]}" for s in _SEVERITIES)
        + ".</p>",
        "<h2>Alerts by rule and severity</h2>"
        + _svg_chart(counts)
        + (
            _table(counts, ["rule_id", "title", "critical", "warning", "info", "total"])
            if counts.height
            else ""
        ),
        "<h2>Patients with the most serious alerts</h2>"
        + (
            _table(top, _TOP_COLUMNS)
            if top.height
            else "<p>None.</p>"
        ),
        "<h2>Rejected records</h2>"
        + (
            _table(errors.head(200), ["source", "row", "patient_id", "reason"])
            if errors.height
            else "<p>None.</p>"
        )
        + (f"<p>… {rejected - 200} more in errors.csv.</p>" if rejected > 200 else ""),
    ]
    if skipped:
        sections.append(
            "<h2>Skipped files</h2><ul>"
            + "".join(f"<li><code>{e(file_label(p))}</code>: {e(r)}</li>" for p, r in skipped[:200])
            + "</ul>"
        )
    if ignored:
        sections.append(
            "<h2>Ignored columns</h2><ul>"
            + "".join(
                f"<li><code>{e(file_label(p))}</code>: {e(', '.join(cols))}</li>"
                for p, cols in ignored.items()
            )
            + "</ul>"
        )
    style = (
        "body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#222}"
        "table{border-collapse:collapse;margin:.5rem 0 1.5rem}"
        "td,th{border:1px solid #ccc;padding:.2rem .5rem;font-size:.9rem;text-align:left}"
        "th{background:#f3f3f3}.ok{color:#1b5e20}.bad{color:#b3261e;"
        "font-weight:bold}.meta{color:#555}code{font-size:.85rem}"
    )
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Batch screening report</title>"
        f"<style>{style}</style></head><body>{''.join(sections)}</body></html>"
    )
