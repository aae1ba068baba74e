"""Schema migrations of the registry database (Alembic), run on the store's own engine.

The store calls `upgrade` whenever it opens a database, so a new registry version brings its
schema along; `python -m services.registry.migrate` does the same by hand (and can go down).
The machinery is services/common/migrate.py; this module names the registry's script directory,
models and lock, and keeps the functions callers and tests already use. The version table stays
`alembic_version`: existing registry databases have it under that name.
"""

from __future__ import annotations

from pathlib import Path

from casbin_sqlalchemy_adapter import CasbinRule
from sqlalchemy import MetaData

from services.common.migrate import Migrations
from services.registry.engine import DEFAULT_DB_URL, make_engine
from services.registry.models import Base

SCRIPT_DIR = Path(__file__).with_name("migrations")
# Databases made by `create_all` before migrations existed hold exactly this revision's schema.
BASELINE = "0001"
# PostgreSQL advisory lock key: replicas starting together must not both create the tables.
MIGRATION_LOCK = 0x48_52_45_47_4D_49_47  # "HREGMIG"


def target_metadata() -> list[MetaData]:
    """The registry's tables plus the casbin adapter's `casbin_rule`, which migrations create too."""
    return [Base.metadata, CasbinRule.metadata]


MIGRATIONS = Migrations(
    script_dir=SCRIPT_DIR,
    target_metadata=target_metadata,
    version_table="alembic_version",
    baseline=BASELINE,
    sentinel="changes",
    lock_key=MIGRATION_LOCK,
)


# What the store, the CLI and the tests call (bound to this service's migrations).
upgrade, downgrade = MIGRATIONS.upgrade, MIGRATIONS.downgrade
open_schema = MIGRATIONS.open_schema  # what the store calls when it opens the database
head, current, diff = MIGRATIONS.head, MIGRATIONS.current, MIGRATIONS.diff


def main(argv: list[str] | None = None) -> None:
    from services.common.config import env

    MIGRATIONS.main(
        argv,
        prog="python -m services.registry.migrate",
        default_db_url=env("REGISTRY_DB", DEFAULT_DB_URL),
        make_engine=make_engine,
        description=__doc__,
    )


if __name__ == "__main__":
    main()
