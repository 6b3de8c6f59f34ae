"""Alembic environment: always run programmatically with a connection from control.store."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from control.store.models import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run migrations through `mediaserver migrate` (control.store.Store.migrate)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
