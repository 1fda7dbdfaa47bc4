"""Alembic environment for the saga store. `sagaq db upgrade` (sagaq/store/migrate.py) runs it
with an open connection, so the URL handling and driver choice are the store's own."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from sagaq.store.schema import metadata

connection: Connection | None = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError(
        "sagaq's migrations run through `sagaq db upgrade` (sagaq.store.migrate.upgrade), "
        "which passes a connection; there is no alembic.ini"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    compare_type=True,
    # SQLite cannot ALTER most things: later migrations copy-and-move tables instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
