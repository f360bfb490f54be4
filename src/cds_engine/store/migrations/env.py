"""Alembic environment: driven from code (``cds_engine.store.migrate``), no alembic.ini.

The caller passes an open connection in ``config.attributes["connection"]``; the command line
``alembic`` can still be used by developers with ``-x url=...`` to write new versions.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from cds_engine.store.models import Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # pragma: no cover - developer use only
    url = (context.get_x_argument(as_dictionary=True).get("url")
           or context.config.get_main_option("sqlalchemy.url"))
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
    else:
        with create_engine(url).connect() as conn:
            _run(conn)
