"""A FastAPI app with only the review pages: for trials and the browser test.

The real service mounts the same router next to the CDS Hooks endpoints; this factory lets
the page run (and be tested in a real browser) without the hook service::

    CDS_DATABASE_URL=sqlite:///cds.db CDS_RULES_DIR=rules \\
        uvicorn cds_engine.service.review.demo_app:create_app --factory --port 8080
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from cds_engine.engine import Engine
from cds_engine.service.review.router import build_router
from cds_engine.store.store import open_store

__all__ = ["create_app"]


def create_app(db_url: str | None = None, rules_dir: str | Path | None = None) -> FastAPI:
    store = open_store(db_url or os.environ.get("CDS_DATABASE_URL") or "")
    rules = Path(rules_dir or os.environ.get("CDS_RULES_DIR") or "rules")
    engine = Engine.from_dir(rules) if (rules / "vocabulary").is_dir() else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    app = FastAPI(title="cds-engine review", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.include_router(build_router(store, lambda: engine))

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/review/alerts", status_code=303)

    app.state.store = store
    return app
