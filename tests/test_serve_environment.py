"""``serve`` run in-process (a test runner) leaves the process environment as it found it.

It sets variables for the processes it starts — the Prometheus multiprocess directory for the writer
process and the workers, the workers' parameters — and a later ``serve`` child of the same test
session would inherit them: it would sum the stale metric files of the first one's writer, or take
itself for a worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from cds_engine import metrics
from cds_engine.cli import app
from cds_engine.commands import serve_workers
from conftest import RULES
from service_helpers import InertEngineHolder, serve_process


def _multiproc_dir() -> str | None:
    return os.environ.get(metrics.MULTIPROC_ENV)


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    monkeypatch.delenv(serve_workers.PARAMS_ENV, raising=False)
    monkeypatch.setattr("cds_engine.commands.serve.EngineHolder", InertEngineHolder)
    umask = os.umask(0o022)  # serve narrows the process umask: give the test session's back
    os.umask(umask)
    yield
    os.umask(umask)


def test_serve_with_a_writer_process_removes_the_metrics_directory_it_set(
        clean: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *_a, **_k: seen.update(dir=_multiproc_dir()))
    result = CliRunner().invoke(app, ["serve", "--no-auth", "--rules", str(RULES), "--writer", "process",
                                      "--db", f"sqlite:///{tmp_path}/s.db"])
    assert result.exit_code == 0, result.output
    assert seen["dir"], "serve set a multiprocess directory for its writer process"
    assert metrics.MULTIPROC_ENV not in os.environ
    assert not Path(seen["dir"]).exists()


def test_serve_without_a_store_sets_no_metrics_directory(
        clean: None, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *_a, **_k: seen.update(dir=_multiproc_dir()))
    result = CliRunner().invoke(app, ["serve", "--no-auth", "--rules", str(RULES), "--writer", "process",
                                      "--db", "none"])
    assert result.exit_code == 0, result.output
    assert seen == {"dir": None}, "no writer process, one process: its own in-memory metrics"


def test_serve_with_workers_leaves_neither_the_metrics_directory_nor_the_worker_parameters(
        clean: None, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def supervise(self: Any) -> None:
        seen.update(dir=_multiproc_dir(), params=os.environ.get(serve_workers.PARAMS_ENV))

    monkeypatch.setattr(serve_workers._Supervisor, "run", supervise)
    result = CliRunner().invoke(app, ["serve", "--no-auth", "--rules", str(RULES), "--db", "none",
                                      "--workers", "2", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert seen["dir"] and seen["params"], "the workers were to get both"
    assert metrics.MULTIPROC_ENV not in os.environ and serve_workers.PARAMS_ENV not in os.environ
    assert not Path(seen["dir"]).exists()


def test_sigterm_ends_serve_by_the_signal_after_its_clean_up(tmp_path: Path) -> None:
    """SIGTERM (every process manager's stop) used to end ``serve`` before its clean-up: uvicorn
    raises the signal again once it has shut down, with the default handler, which killed the
    process on the spot — the store was not closed (the writer process only found its parent gone)
    and the metrics directory stayed in the temporary folder. Now the clean-up runs first and the
    process still ends by SIGTERM."""
    import signal

    import psutil

    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    args = ["--no-auth", "--rules", str(RULES), "--writer", "process", "--db", f"sqlite:///{tmp_path}/s.db"]
    with serve_process(args, tmp_path, env={"TMPDIR": str(private_tmp)}) as (_base, process, log_path):
        assert list(private_tmp.glob("cds-metrics-*")), "serve set up a metrics directory for its writer"
        children = psutil.Process(process.pid).children(recursive=True)  # the writer process among them
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == -signal.SIGTERM, "the process still ends by the signal"
        psutil.wait_procs(children, timeout=15)
    log = log_path.read_text()
    assert not list(private_tmp.glob("cds-metrics-*")), log
    assert "the serve process is gone" not in log, "the store was closed, not abandoned:\n" + log
