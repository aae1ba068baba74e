"""SQLAlchemy engine setup shared by the stores: SQLite (embedded default) or PostgreSQL by URL.

SQLite is driven in non-legacy transaction mode so that a write transaction can start with
BEGIN IMMEDIATE: the write lock is taken up front, so two writers (threads or processes) never
append on the same audit-chain head, and a writer waits (busy_timeout) instead of failing with
"database is locked" when it upgrades a read snapshot another writer moved.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

# Execution option that makes a SQLite transaction take the write lock at BEGIN.
IMMEDIATE = "harness_sqlite_immediate"


WAL_SWITCH_WAIT_S = 30.0


def use_wal(cursor: sqlite3.Cursor) -> None:
    """Puts the database file in WAL mode (a property of the file, kept across connections).
    Switching needs the file to itself for a moment, and SQLite answers "database is locked" at
    once rather than through the busy handler while another process has it open (replicas or
    services opening a fresh file together): wait and retry instead of failing the open."""
    deadline = time.monotonic() + WAL_SWITCH_WAIT_S
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str) -> Engine:
    """Creates the engine; for a file SQLite URL also creates the state directory."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Take BEGIN away from sqlite3 so the "begin" hook below decides DEFERRED vs IMMEDIATE.
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA busy_timeout=30000")  # wait for the writer instead of failing
        use_wal(cur)  # readers do not block the single writer
        cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crash
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        immediate = conn.get_execution_options().get(IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
