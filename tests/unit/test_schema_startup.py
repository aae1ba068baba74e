"""`--schema check`: a store opening a database that is not at the code's head refuses to start
with the command that fixes it, and opens it untouched once the migration (job) has run;
`--schema upgrade`, the default, migrates as before."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from services.audit import migrate as audit_migrate
from services.audit.store import AuditStore
from services.common import migrate
from services.common.config import add_server_args, server_config_from_args
from services.common.db import make_engine


@pytest.fixture
def schema_check():
    migrate.STARTUP.upgrade = False
    yield
    migrate.STARTUP.upgrade = True


def test_check_refuses_an_unmigrated_database_and_names_the_job(tmp_path, schema_check):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with pytest.raises(migrate.SchemaNotAtHead, match=r"python -m services\.audit\.migrate upgrade"):
        AuditStore(url)
    engine = make_engine(url)
    assert "audit_records" not in inspect(engine).get_table_names()  # nothing was created
    audit_migrate.upgrade(engine)  # what the migration Job runs
    engine.dispose()
    AuditStore(url)  # now at head: opens


def test_the_message_names_each_services_own_command(tmp_path, schema_check):
    from services.registry import migrate as registry_migrate

    engine = make_engine(
        f"sqlite:///{tmp_path / 'registry.db'}"
    )  # its version table is plain alembic_version
    with pytest.raises(migrate.SchemaNotAtHead, match=r"python -m services\.registry\.migrate upgrade"):
        registry_migrate.open_schema(engine)
    engine.dispose()


def test_the_flag_sets_the_startup_policy():
    import argparse

    parser = argparse.ArgumentParser()
    add_server_args(parser, default_port=1, default_metrics=2)
    try:
        server_config_from_args("audit", parser.parse_args(["--schema", "check"]))
        assert migrate.STARTUP.upgrade is False
        server_config_from_args("audit", parser.parse_args([]))
        assert migrate.STARTUP.upgrade is True
    finally:
        migrate.STARTUP.upgrade = True
    with pytest.raises(SystemExit):
        parser.parse_args(["--schema", "sometimes"])
