"""Alembic environment: runs migrations on the connection `services.registry.migrate` hands over.

There is no alembic.ini and no URL here on purpose: the store (or `python -m
services.registry.migrate`) opens the engine the same way for SQLite and PostgreSQL, takes
the migration lock, and passes the connection in `config.attributes`. `run_env` also limits
autogenerate to the registry's own tables, since cost and audit may share the database.
"""

from services.common.migrate import run_env

run_env()
