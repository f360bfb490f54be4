"""The clinicians' review pages (``/review``): server-rendered, plain forms, no JavaScript needed.

Mounted by the service through :meth:`cds_engine.store.Store.review_router`. The page has its
own auth domain (users, server-side sessions, CSRF tokens), separate from the hook's JWTs.
"""
