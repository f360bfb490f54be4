"""Alembic environment and schema versions, run by :func:`cds_engine.store.migrate.upgrade`."""
