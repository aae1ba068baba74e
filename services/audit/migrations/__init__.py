"""Alembic script directory of the audit service (run through `services.audit.migrate`)."""
