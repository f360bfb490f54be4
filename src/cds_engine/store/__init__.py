"""Persistence of evaluations, alerts, feedback and the audit log.

``open_store(url)`` returns a :class:`Store`: ``.sink`` for the hook (an
:class:`~cds_engine.store.api.EvaluationSink`), ``.review_router(engine_provider)`` for the
review pages, ``.close()``.
"""

from cds_engine.store.store import Store, open_store

__all__ = ["Store", "open_store"]
