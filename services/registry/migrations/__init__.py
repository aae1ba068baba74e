"""Alembic script directory of the registry (run through `services.registry.migrate`)."""
