"""Serving the metrics: request timing middleware, the ``/metrics`` route, and the loopback port.

Two ways to expose :mod:`cds_engine.metrics`, chosen by the operator (``serve``):

- ``--metrics-port N``: a separate HTTP listener bound to loopback (127.0.0.1) — for a Prometheus
  agent on the same host, unreachable from the network the EHR talks on;
- ``--metrics-token-file PATH``: ``GET /metrics`` on the service port, answered only with
  ``Authorization: Bearer <token>`` (compared in constant time) — for a scraper elsewhere.

With neither, nothing is exposed. The request timing label is the CDS service id (bounded by
:func:`cds_engine.metrics.service_label`) or a route kind — never a path with ids in it.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response

from cds_engine import metrics

__all__ = ["count_cards", "metrics_router", "read_token", "route_label",
           "start_metrics_port"]

Scope = dict[str, Any]


_ROUTE_LABELS: dict[str, str | None] = {}
_ROUTE_LABELS_MAX = 512  # distinct paths remembered; beyond, labels are computed each time


def route_label(path: str) -> str | None:
    """The ``service`` label of a request path (None: not timed).

    Remembered per path (the same few paths carry nearly every request): the label of a path never
    changes once computed — :func:`cds_engine.metrics.service_label` admits an id once and never
    forgets it, and once its cap is reached it answers ``other`` for good — so the cache answers
    what the computation would. Bounded: a caller sending endless distinct paths fills it once.
    """
    found = _ROUTE_LABELS.get(path, False)
    if found is not False:
        return found  # type: ignore[return-value]
    result = _route_label(path)
    if len(_ROUTE_LABELS) < _ROUTE_LABELS_MAX:
        _ROUTE_LABELS[path] = result
    return result


def _route_label(path: str) -> str | None:
    parts = [p for p in path.split("/") if p]
    if not parts:
        return "other"
    head = parts[0]
    if head == "cds-services":
        if len(parts) == 1:
            return "discovery"
        if len(parts) == 3 and parts[2] == "feedback":
            return "feedback"
        return metrics.service_label(parts[1]) if len(parts) == 2 else "other"
    if head in ("evaluate", "review", "healthz"):
        return head
    if head == "metrics":
        return None
    return "other"


def count_cards(pack_id: str, issued: Iterable[tuple[Any, bool]], *, silent: bool = False) -> None:
    """Count the alerts of one evaluation: shown, hidden (repeat-suppressed or already shown this
    encounter) or silent (a draft pack). ``issued``: (alert, shown) pairs."""
    pack = metrics.label(pack_id)
    for alert, shown in issued:
        outcome = "silent" if silent else ("shown" if shown else "hidden")
        metrics.CARDS.child(pack, metrics.label(alert.rule_id), alert.severity, outcome).inc()


def read_token(path: Path) -> str:
    """The scrape token: one line, at least 32 characters (refused otherwise)."""
    token = path.read_text(encoding="utf-8").strip()
    if len(token) < 32 or any(c.isspace() for c in token):
        raise ValueError(f"{path}: the metrics token must be one word of at least 32 characters")
    return token


def metrics_router(token: str) -> APIRouter:
    router = APIRouter()
    expected = f"Bearer {token}".encode()

    @router.get("/metrics", include_in_schema=False)
    def scrape(request: Request) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})
        body, content_type = metrics.exposition()
        return Response(content=body, media_type=content_type)

    return router


def start_metrics_port(port: int, host: str = "127.0.0.1") -> Any:
    """A loopback-only listener for the exposition (prometheus-client's own server, a daemon thread)."""
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise ValueError(f"--metrics-port listens on loopback only, not {host!r} (use --metrics-token-file)")
    import os

    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

    registry = REGISTRY
    if os.environ.get(metrics.MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    metrics.declare_all()
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
