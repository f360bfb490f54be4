"""Persistence of evaluations, alerts, feedback and the audit log.

``open_store(url)`` returns a :class:`Store`: ``.sink`` for the hook (an
:class:`~cds_engine.store.api.EvaluationSink`), ``.session()`` for the review pages' queries,
``.close()``. The store knows no web layer: the service mounts the review pages over it
(:func:`cds_engine.service.review.router.build_router`).
"""

from cds_engine.store import fatigue as _fatigue  # noqa: F401  (its tables belong to the schema)
from cds_engine.store.store import Store, open_store

__all__ = ["Store", "open_store"]
