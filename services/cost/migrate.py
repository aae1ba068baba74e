"""Schema migrations of the cost database (Alembic), run on the store's own engine.

The store calls `upgrade` whenever it opens a database, so a new release brings its schema
along; `python -m services.cost.migrate` does the same by hand (and can go down, check for drift
or draft the next revision). The machinery is services/common/migrate.py. The version table is
`alembic_version_cost`: the cost tables may live in one database with the registry's and audit's.
"""

from __future__ import annotations

from services.common.migrate import Migrations
from services.cost.models import metadata

MIGRATIONS = Migrations.beside(
    __file__, service="cost", sentinel="usage_ledger", target_metadata=lambda: [metadata]
)


# What the store, the CLI and the tests call (bound to this service's migrations).
upgrade, downgrade = MIGRATIONS.upgrade, MIGRATIONS.downgrade
open_schema = MIGRATIONS.open_schema  # what the store calls when it opens the database
head, current, diff = MIGRATIONS.head, MIGRATIONS.current, MIGRATIONS.diff


def main(argv: list[str] | None = None) -> None:
    from services.common.config import env
    from services.common.db import make_engine
    from services.cost.config import DEFAULT_DB_URL

    MIGRATIONS.main(
        argv,
        prog="python -m services.cost.migrate",
        default_db_url=env("COST_DB", DEFAULT_DB_URL),
        make_engine=make_engine,
        description=__doc__,
    )


if __name__ == "__main__":
    main()
