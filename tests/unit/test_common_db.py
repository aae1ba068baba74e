"""SQLite engine setup: opening a database while another process writes to it."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from sqlalchemy import text

from services.common.db import make_engine, use_wal


def writer_holding_the_lock(path) -> sqlite3.Connection:
    """Another process mid-write (a migration in BEGIN IMMEDIATE) on a rollback-journal file."""
    w = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    w.execute("CREATE TABLE t (x)")
    w.execute("BEGIN IMMEDIATE")
    w.execute("INSERT INTO t VALUES (1)")
    return w


def test_switching_to_wal_waits_for_a_writer_sqlite_would_refuse_at_once(tmp_path):
    path = tmp_path / "state.db"
    w = writer_holding_the_lock(path)
    r = sqlite3.connect(path, timeout=5, isolation_level=None)
    try:
        # What a plain PRAGMA does here: "locked" at once, the busy timeout notwithstanding.
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            r.execute("PRAGMA journal_mode=WAL")
        threading.Timer(0.2, lambda: w.execute("COMMIT")).start()
        use_wal(r.cursor())
        assert r.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        r.close()
        w.close()


def test_an_engine_opens_while_another_process_writes(tmp_path):
    path = tmp_path / "state.db"
    w = writer_holding_the_lock(path)
    engine = make_engine(f"sqlite:///{path}")
    try:
        threading.Timer(0.2, lambda: w.execute("COMMIT")).start()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 1
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        engine.dispose()
        w.close()
