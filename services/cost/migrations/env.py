"""Alembic environment: runs migrations on the connection `services.cost.migrate` hands over.

No alembic.ini and no URL on purpose: the store (or `python -m services.cost.migrate`) opens the
engine the same way for SQLite and PostgreSQL, takes the migration lock, and passes the
connection in `config.attributes`. `run_env` also limits autogenerate to this service's own
tables and version table, since the registry and the other services may share the database.
"""

from services.common.migrate import run_env

run_env()
