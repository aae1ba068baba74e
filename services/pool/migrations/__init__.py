"""Alembic script directory of the pool service (run through `services.pool.migrate`)."""
