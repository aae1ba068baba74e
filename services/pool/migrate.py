"""Schema migrations of the pool's claim database (Alembic), run on the claim store's own engine.

The claim store calls `upgrade` whenever it opens a database, so a new release brings its schema
along; `python -m services.pool.migrate` does the same by hand (and can go down, check for drift
or draft the next revision). The machinery is services/common/migrate.py. The version table is
`alembic_version_pool`: the claims may live in one database with the other services' tables.

The pool has no database by default (claims in memory), so the command line needs `--db-url`
or HARNESS_POOL_DB, the same URL the pool is started with.
"""

from __future__ import annotations

from sqlalchemy import Engine, MetaData

from services.common.migrate import Migrations
from services.pool.claims_schema import metadata


def _claims_metadata() -> list[MetaData]:
    return [metadata]


MIGRATIONS = Migrations.beside(
    __file__, service="pool", sentinel="pool_claims", target_metadata=_claims_metadata
)


# What the store, the CLI and the tests call (bound to this service's migrations).
upgrade, downgrade = MIGRATIONS.upgrade, MIGRATIONS.downgrade
open_schema = MIGRATIONS.open_schema  # what the store calls when it opens the database
head, current, diff = MIGRATIONS.head, MIGRATIONS.current, MIGRATIONS.diff


def _make_engine(url: str) -> Engine:
    from services.common.db import make_engine

    if not url:
        raise SystemExit(
            "python -m services.pool.migrate: no database (the pool keeps claims in memory without "
            "one); pass --db-url or set HARNESS_POOL_DB"
        )
    return make_engine(url)


def main(argv: list[str] | None = None) -> None:
    from services.common.config import env

    MIGRATIONS.main(
        argv,
        prog="python -m services.pool.migrate",
        default_db_url=env("POOL_DB", ""),  # as services/pool/config.py's --db-url
        make_engine=_make_engine,
        description=__doc__,
    )


if __name__ == "__main__":
    main()
