"""Alembic script directory of the cost service (run through `services.cost.migrate`)."""
