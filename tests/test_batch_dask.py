"""The same chunks on a Dask LocalCluster, on a local process pool and in-process give the same outputs;
a run killed with SIGKILL half way resumes into complete, non-duplicated outputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from cds_engine.batch.runner import ScreenOptions, run_screen
from conftest import RULES
from test_batch_inputs import CSV_HEADER, CSV_ROWS, patient_bundle, write_bundle

AS_OF = "2026-01-15T12:00:00+00:00"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dask-inputs")
    for i in range(24):
        write_bundle(
            root / f"p{i:02d}.json",
            patient_bundle(
                f"d{i:02d}", egfr=[12.0, 35.0, 70.0, None][i % 4], birth=None if i % 7 == 0 else "1950-01-01"
            ),
        )
    (root / "bad.json").write_text("{", encoding="utf-8")
    (root / "t.csv").write_text("\n".join([CSV_HEADER, *CSV_ROWS]) + "\n", encoding="utf-8")
    return root


def _outputs(out: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    return (
        pl.read_parquet(out / "alerts.parquet"),
        pl.read_parquet(out / "patients.parquet"),
        pl.read_csv(out / "errors.csv", infer_schema=False),
    )


def _run(inputs: Path, out: Path, **kw) -> int:
    opts = ScreenOptions(
        inputs=[inputs],
        out=out,
        rules=RULES,
        as_of=AS_OF,
        assume_order="baclofen 5 mg PO TID",
        bundles_per_chunk=4,
        rows_per_chunk=3,
        progress=False,
        **kw,
    )
    return run_screen(opts).exit_code


def test_dask_local_cluster_and_process_pool_match_serial(inputs, tmp_path):
    from distributed import LocalCluster

    assert _run(inputs, tmp_path / "serial") == 1
    serial = _outputs(tmp_path / "serial")
    assert serial[0].height > 20 and serial[2].height == 4
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        assert _run(inputs, tmp_path / "dask", dask=cluster.scheduler_address) == 1
    assert _run(inputs, tmp_path / "pool", workers=2) == 1
    for name in ("dask", "pool"):
        other = _outputs(tmp_path / name)
        for a, b in zip(serial, other, strict=True):
            assert a.equals(b), name


def test_sigkill_then_rerun_gives_complete_unduplicated_outputs(inputs, tmp_path):
    _run(inputs, tmp_path / "clean")
    clean = _outputs(tmp_path / "clean")
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "cds_engine.cli",
        "screen",
        str(inputs),
        "--out",
        str(out),
        "--rules",
        str(RULES),
        "--as-of",
        AS_OF,
        "--assume-order",
        "baclofen 5 mg PO TID",
        "--chunk-bundles",
        "1",
        "--chunk-rows",
        "1",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(list((out / ".parts").glob("*.done"))) < 5:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done_before = len(list((out / ".parts").glob("*.done")))
    assert 5 <= done_before < 32, "the run must be killed half way"
    assert not (out / "alerts.parquet").exists()
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 1, rerun.stderr
    alerts, patients, errors = _outputs(out)
    assert alerts.equals(clean[0]) and patients.equals(clean[1])
    assert errors.sort("source", "row").equals(clean[2].sort("source", "row"))
    assert patients.select(pl.struct("source", "row").n_unique()).item() == patients.height
