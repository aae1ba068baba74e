"""Alembic environment: runs migrations on the connection `services.pool.migrate` hands over.

No alembic.ini and no URL on purpose: the claim store (or `python -m services.pool.migrate`)
opens the engine the same way for SQLite and PostgreSQL, takes the migration lock, and passes the
connection in `config.attributes`. `run_env` also limits autogenerate to the pool's own tables
and version table, since the registry and the other services may share the database.
"""

from services.common.migrate import run_env

run_env()
