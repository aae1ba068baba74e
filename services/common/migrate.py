"""Alembic schema migrations for a service's store, shared by the registry, cost and audit services.

Each service describes its migrations once (a `Migrations`: script directory, models, version
table, baseline, sentinel table, lock key) and gets upgrade/downgrade/current/head/diff and the
`python -m services.<name>.migrate` command line from it. Stores call `upgrade` whenever they
open a database, so a new release brings its schema along.

No alembic.ini: the connection and the `Migrations` are handed to the service's
`migrations/env.py` through `Config.attributes`, so SQLite and PostgreSQL URLs work exactly as the
store opens them. Services may share one database, so each keeps its own version table and
autogenerate compares only the tables in the service's own models (`include_name`), never another
service's tables or version table. The price of that filter: a table dropped from the models is
not proposed for dropping; write that `op.drop_table` by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, inspect, text

from services.common.db import IMMEDIATE

ACTIONS = ("upgrade", "downgrade", "current", "check", "revision")
# Alembic runs migrations through module-global proxies (`alembic.context`, `alembic.op`), so two
# threads of one process must not run migrations at once, not even of different services.
_IN_PROCESS = threading.Lock()


@dataclass
class StartupSchema:
    """What a store does to its schema when it opens the database. `upgrade` (the default): bring
    it to this release's head. Off (`--schema check`): only verify it is at head, for deployments
    that migrate once in a separate job (the Kubernetes migration Job) instead of at every start."""

    upgrade: bool = True


STARTUP = StartupSchema()


class SchemaNotAtHead(RuntimeError):
    """`--schema check` and the database is not at the code's head revision."""


@dataclass(frozen=True)
class Migrations:
    """One service's migrations. Frozen module-level value: the service's `migrate.py` builds it."""

    script_dir: Path  # the service's `migrations/` (env.py, script.py.mako, versions/)
    target_metadata: Callable[[], list[MetaData]]  # the models the migrations must match
    version_table: str  # distinct per service: services may share one database
    # Databases made by `create_all` before migrations existed hold exactly this revision's schema;
    # such a database is recognised by `sentinel` (one of its tables) and no version table.
    baseline: str
    sentinel: str
    # PostgreSQL advisory lock key: replicas starting together must not both create the tables.
    lock_key: int

    @classmethod
    def beside(
        cls, module_file: str, *, service: str, sentinel: str, target_metadata: Callable[[], list[MetaData]]
    ) -> Migrations:
        """A service's migrations in the `migrations/` next to its `migrate.py`, with its own
        version table `alembic_version_<service>` and advisory lock, from baseline 0001."""
        digest = hashlib.sha256(f"harness-migrations:{service}".encode()).digest()
        return cls(
            script_dir=Path(module_file).with_name("migrations"),
            target_metadata=target_metadata,
            version_table=f"alembic_version_{service}",
            baseline="0001",
            sentinel=sentinel,
            lock_key=int.from_bytes(digest[:8], "big", signed=True),  # PostgreSQL's bigint
        )

    def owned_tables(self) -> frozenset[str]:
        return frozenset(t for md in self.target_metadata() for t in md.tables)

    def include_name(self, name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
        """Autogenerate filter: only this service's tables (its version table alembic skips itself)."""
        return type_ != "table" or name in self.owned_tables()

    def config(self, conn: Connection) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(self.script_dir))
        cfg.attributes["connection"] = conn
        cfg.attributes["migrations"] = self
        return cfg

    @contextmanager
    def locked(self, engine: Engine) -> Iterator[Connection]:
        """One transaction holding the migration lock until commit.

        PostgreSQL: a transaction-level advisory lock. SQLite: BEGIN IMMEDIATE on engines from
        services.common.db (the write lock up front, so a second process waits instead of failing
        on a snapshot the first one moved); other engines ignore the option. Within one process
        `_IN_PROCESS` is held first, since alembic's proxies are global.
        """
        with _IN_PROCESS, engine.connect() as conn:
            conn = conn.execution_options(**{IMMEDIATE: True})
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": self.lock_key})
                yield conn

    def head(self) -> str:
        return ScriptDirectory(str(self.script_dir)).get_current_head() or ""

    def current(self, engine: Engine) -> str | None:
        """The revision the database is at; None for an empty (or unversioned) database."""
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table": self.version_table})
            return ctx.get_current_revision()

    def upgrade(self, engine: Engine, revision: str = "head") -> None:
        """Brings the schema to `revision`; an unversioned pre-migration database is adopted first."""
        with self.locked(engine) as conn:
            tables = set(inspect(conn).get_table_names())
            cfg = self.config(conn)
            if self.sentinel in tables and self.version_table not in tables:
                command.stamp(cfg, self.baseline)
            command.upgrade(cfg, revision)

    def open_schema(self, engine: Engine) -> None:
        """Called by a store opening its database: upgrade, or (STARTUP.upgrade off) verify."""
        if STARTUP.upgrade:
            self.upgrade(engine)
            return
        at, head = self.current(engine), self.head()
        if at != head:
            service = self.script_dir.parent.name  # services/<service>/migrations
            raise SchemaNotAtHead(
                f"the {service} database is at revision {at or '(none)'} and this release needs {head}: "
                f"run `python -m services.{service}.migrate upgrade` (the migration Job) first, "
                "or start with --schema upgrade"
            )

    def downgrade(self, engine: Engine, revision: str = "base") -> None:
        """Takes the schema down to `revision` ("base" drops every table of this service)."""
        with self.locked(engine) as conn:
            command.downgrade(self.config(conn), revision)

    def diff(self, engine: Engine) -> list:
        """What autogenerate would still change to make the database match the models ([] = in sync)."""
        with engine.connect() as conn:
            opts = {
                "compare_type": True,
                "version_table": self.version_table,
                "include_name": self.include_name,
            }
            return compare_metadata(MigrationContext.configure(conn, opts=opts), self.target_metadata())

    def revision(self, engine: Engine, message: str) -> None:
        """Drafts the next migration from the models (review it!), numbered after the head."""
        head = self.head()
        rev_id = f"{int(head or 0) + 1:04d}" if re.fullmatch(r"\d*", head) else None
        with self.locked(engine) as conn:
            command.revision(self.config(conn), message=message, autogenerate=True, rev_id=rev_id)

    def main(
        self,
        argv: list[str] | None,
        *,
        prog: str,
        default_db_url: str,
        make_engine: Callable[[str], Engine],
        description: str | None = None,
    ) -> None:
        """The ops command line: upgrade, downgrade, current, check (exit 1 on drift), revision."""
        parser = argparse.ArgumentParser(prog=prog, description=description)
        parser.add_argument("--db-url", default=default_db_url)
        parser.add_argument("action", choices=ACTIONS)
        parser.add_argument(
            "revision", nargs="?", help="target (default: head for upgrade, base for downgrade)"
        )
        parser.add_argument("-m", "--message", help="revision: what the new migration does")
        args = parser.parse_args(argv)
        if args.action == "revision" and not args.message:
            parser.error("revision needs -m/--message")
        engine = make_engine(args.db_url)
        try:
            if args.action == "upgrade":
                self.upgrade(engine, args.revision or "head")
            elif args.action == "downgrade":
                self.downgrade(engine, args.revision or "base")
            elif args.action == "revision":
                self.revision(engine, args.message)
            elif args.action == "check":
                changes = self.diff(engine)
                print("in sync" if not changes else "\n".join(map(str, changes)))
                raise SystemExit(1 if changes else 0)
            print(f"{self.current(engine) or '(empty)'} (head {self.head()})")
        finally:
            engine.dispose()


def run_env() -> None:
    """The body of every service's `migrations/env.py`: migrate the connection handed over."""
    from alembic import context

    attrs = context.config.attributes
    connection, migrations = attrs.get("connection"), attrs.get("migrations")
    if connection is None or not isinstance(migrations, Migrations):
        raise RuntimeError("run migrations through `python -m services.<service>.migrate`")
    context.configure(
        connection=connection,
        target_metadata=migrations.target_metadata(),
        version_table=migrations.version_table,
        include_name=migrations.include_name,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
