"""Alembic environment: runs migrations on the connection `services.registry.migrate` hands over.

There is no alembic.ini and no URL here on purpose: the store (or `python -m
services.registry.migrate`) opens the engine the same way for SQLite and PostgreSQL, takes
the migration lock, and passes the connection in `config.attributes["connection"]`.
"""

from alembic import context

from services.registry.migrate import target_metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run registry migrations through `python -m services.registry.migrate`")

context.configure(
    connection=connection,
    target_metadata=target_metadata(),
    compare_type=True,
    # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
