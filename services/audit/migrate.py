"""Schema migrations of the audit database (Alembic), run on the store's own engine.

The store calls `upgrade` whenever it opens a database, so a new release brings its schema
along; `python -m services.audit.migrate` does the same by hand (and can go down, check for drift
or draft the next revision). The machinery is services/common/migrate.py. The version table is
`alembic_version_audit`: the audit tables may live in one database with the registry's and cost's.
"""

from __future__ import annotations

from services.audit.models import metadata
from services.common.migrate import Migrations

MIGRATIONS = Migrations.beside(
    __file__, service="audit", sentinel="audit_records", target_metadata=lambda: [metadata]
)


# What the store, the CLI and the tests call (bound to this service's migrations).
upgrade, downgrade = MIGRATIONS.upgrade, MIGRATIONS.downgrade
open_schema = MIGRATIONS.open_schema  # what the store calls when it opens the database
head, current, diff = MIGRATIONS.head, MIGRATIONS.current, MIGRATIONS.diff


def main(argv: list[str] | None = None) -> None:
    from services.audit.config import DEFAULT_DB_URL
    from services.common.config import env
    from services.common.db import make_engine

    MIGRATIONS.main(
        argv,
        prog="python -m services.audit.migrate",
        default_db_url=env("AUDIT_DB", DEFAULT_DB_URL),
        make_engine=make_engine,
        description=__doc__,
    )


if __name__ == "__main__":
    main()
