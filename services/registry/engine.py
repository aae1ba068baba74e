"""The registry's database engine and default URL (shared by the store and the migration CLI)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event

from services.common.db import use_wal

DEFAULT_DB_URL = "sqlite:///.harness/state/registry.db"


def make_engine(url: str) -> Engine:
    """Engine for `url`; SQLite gets its parent dir, WAL, a busy timeout and enforced FKs."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # SQLite leaves FKs off unless asked per connection
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            use_wal(cur)
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)
