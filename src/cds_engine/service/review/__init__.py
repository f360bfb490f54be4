"""The clinicians' review pages (``/review``): server-rendered, plain forms, no JavaScript needed.

Mounted by the service over the store it is given: ``build_router(store, engine_provider)``
(:mod:`cds_engine.service.review.router`); the store itself knows no web layer. The page has its
own auth domain (users, server-side sessions, CSRF tokens), separate from the hook's JWTs.
"""
