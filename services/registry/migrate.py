"""Schema migrations of the registry database (Alembic), run on the store's own engine.

The store calls `upgrade` whenever it opens a database, so a new registry version brings its
schema along; `python -m services.registry.migrate` does the same by hand (and can go down).
No alembic.ini: the script directory is `migrations/` next to this file and the connection is
handed to `migrations/env.py` through `Config.attributes`, so SQLite and PostgreSQL URLs work
exactly as the store opens them.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from casbin_sqlalchemy_adapter import CasbinRule
from sqlalchemy import Connection, Engine, MetaData, inspect, text

from services.registry.models import Base

SCRIPT_DIR = Path(__file__).with_name("migrations")
# Databases made by `create_all` before migrations existed hold exactly this revision's schema.
BASELINE = "0001"
# PostgreSQL advisory lock key: replicas starting together must not both create the tables.
MIGRATION_LOCK = 0x48_52_45_47_4D_49_47  # "HREGMIG"


def target_metadata() -> list[MetaData]:
    """The registry's tables plus the casbin adapter's `casbin_rule`, which migrations create too."""
    return [Base.metadata, CasbinRule.metadata]


def _config(conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_DIR))
    cfg.attributes["connection"] = conn
    return cfg


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """One transaction; on PostgreSQL it also holds the migration lock until commit."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        yield conn


def head() -> str:
    return ScriptDirectory(str(SCRIPT_DIR)).get_current_head() or ""


def current(engine: Engine) -> str | None:
    """The revision the database is at; None for an empty (or unversioned) database."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Brings the schema to `revision`; an unversioned pre-migration database is adopted first."""
    with _locked(engine) as conn:
        tables = set(inspect(conn).get_table_names())
        cfg = _config(conn)
        if "changes" in tables and "alembic_version" not in tables:
            command.stamp(cfg, BASELINE)
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Takes the schema down to `revision` ("base" drops every registry table)."""
    with _locked(engine) as conn:
        command.downgrade(_config(conn), revision)


def diff(engine: Engine) -> list:
    """What autogenerate would still change to make the database match the models ([] = in sync)."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, target_metadata())


def main(argv: list[str] | None = None) -> None:
    from services.common.config import env
    from services.registry.app import DEFAULT_DB_URL
    from services.registry.store import make_engine

    parser = argparse.ArgumentParser(prog="python -m services.registry.migrate", description=__doc__)
    parser.add_argument("--db-url", default=env("REGISTRY_DB", DEFAULT_DB_URL))
    parser.add_argument("action", choices=("upgrade", "downgrade", "current", "check", "revision"))
    parser.add_argument("revision", nargs="?", help="target (default: head for upgrade, base for downgrade)")
    parser.add_argument("-m", "--message", help="revision: what the new migration does")
    args = parser.parse_args(argv)
    engine = make_engine(args.db_url)
    try:
        if args.action == "upgrade":
            upgrade(engine, args.revision or "head")
        elif args.action == "downgrade":
            downgrade(engine, args.revision or "base")
        elif args.action == "revision":  # draft the next migration from the models (review it!)
            if not args.message:
                parser.error("revision needs -m/--message")
            with _locked(engine) as conn:
                command.revision(_config(conn), message=args.message, autogenerate=True)
        elif args.action == "check":
            changes = diff(engine)
            print("in sync" if not changes else "\n".join(map(str, changes)))
            raise SystemExit(1 if changes else 0)
        print(f"{current(engine) or '(empty)'} (head {head()})")
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
