"""The HTTP service: CDS Hooks 2.0 endpoints, /evaluate, review pages.

``create_app(engine_provider, sink=..., auth=...)`` builds the FastAPI application (see
:mod:`cds_engine.service.app`). Imported lazily so that sub-packages (the review pages) can be
imported without pulling in the whole service.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AuthSettings", "ServiceSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "ServiceSettings"):
        from cds_engine.service import app

        return getattr(app, name)
    if name == "AuthSettings":
        from cds_engine.service.auth import AuthSettings

        return AuthSettings
    raise AttributeError(name)
