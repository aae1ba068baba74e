"""The router's durable outbox: audit and usage events are in a local SQLite WAL file before
the request's answer completes, and leave it only once the receiver acknowledged them.

A router killed with SIGKILL loses nothing it accepted: on restart the shipper sends what is
still in the file. Receivers deduplicate by event id, so a batch sent twice (acknowledged by
the receiver, router killed before deleting it) is stored once.

WAL with synchronous=NORMAL: a commit survives the process dying at any point (the OS holds
the write); only a power loss can lose the last commits, which is the trade TRT-LLM hosts
make for their own logs. `append` runs on the event loop: an insert is tens of microseconds,
cheaper than a hop to a worker thread.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


class OutboxError(Exception):
    """An event could not be made durable (disk full, file unwritable...)."""


class Outbox:
    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit (isolation_level=None): each statement is its own transaction.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # One process owns the file for its whole life: no file lock is taken and released per
        # transaction (fewer system calls per call), and a second router given the same file is
        # refused here instead of shipping the first one's calls under way as aborted.
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("BEGIN EXCLUSIVE")
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._db.close()
            if "locked" in str(exc):
                raise OutboxError(
                    f"outbox {path} is held by another process ({exc}): each router process needs "
                    "an outbox file of its own (--outbox)"
                ) from exc
            raise OutboxError(f"outbox {path} cannot be opened: {exc}") from exc
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox ("
            " seq INTEGER PRIMARY KEY AUTOINCREMENT, lane TEXT NOT NULL, payload BLOB NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS outbox_lane ON outbox (lane, seq)")
        # Calls under way: what to ship as an aborted call if this process dies before the call
        # ends (its audit and usage events as known so far; see begin_call).
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS calls ("
            " call_id TEXT PRIMARY KEY, started REAL NOT NULL, audit BLOB NOT NULL, usage BLOB NOT NULL)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "created" not in columns:  # a file from before events had their time (NULL: unknown)
            self._db.execute("ALTER TABLE outbox ADD COLUMN created REAL")
        self._opened = time.time()
        self.path = path
        self.failing = False  # the last append failed

    def writable(self) -> bool:
        """Whether an append would succeed now (a write transaction can start)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            return False
        return True

    def append(self, lane: str, payload: bytes) -> None:
        try:
            self._db.execute(
                "INSERT INTO outbox (lane, payload, created) VALUES (?, ?, ?)", (lane, payload, time.time())
            )
        except sqlite3.Error as exc:
            self.failing = True
            raise OutboxError(f"outbox {self.path}: {exc}") from exc
        self.failing = False

    def append_call_end(self, rows: list[tuple[str, bytes]], call_id: str = "") -> None:
        """A call's own events (lane, payload) and, with `call_id`, the end of its journal entry,
        in one transaction: one commit instead of one per event (each is a write to the WAL)."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                db.executemany(
                    "INSERT INTO outbox (lane, payload, created) VALUES (?, ?, ?)",
                    [(lane, payload, now) for lane, payload in rows],
                )
                if call_id:
                    db.execute("DELETE FROM calls WHERE call_id = ?", (call_id,))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self.failing = True
            raise OutboxError(f"outbox {self.path}: {exc}") from exc
        self.failing = False

    def peek(self, lane: str, limit: int) -> list[tuple[int, bytes]]:
        """The oldest `limit` events of `lane` (seq, payload), still in the outbox."""
        return self._db.execute(
            "SELECT seq, payload FROM outbox WHERE lane = ? ORDER BY seq LIMIT ?", (lane, limit)
        ).fetchall()

    def ack(self, seqs: list[int]) -> None:
        """The receiver has them: drop them."""
        if seqs:
            self._db.execute(f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(seqs))})", seqs)

    def oldest(self, lane: str) -> float | None:
        """Unix time the oldest event of `lane` was written (events from before the column
        existed count from this open), or None when the lane is empty."""
        row = self._db.execute(
            "SELECT created FROM outbox WHERE lane = ? ORDER BY seq LIMIT 1", (lane,)
        ).fetchone()
        if row is None:
            return None
        return self._opened if row[0] is None else row[0]

    def pending(self, lane: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM outbox WHERE lane = ?", (lane,)).fetchone()[0]

    # ---- calls under way ----

    def begin_call(self, call_id: str, audit: bytes, usage: bytes) -> None:
        """Records, durably, that a call started: `audit` and `usage` are the events to ship if
        the process dies before end_call (they carry the final events' ids, so when both reach
        the receivers only the first stored counts)."""
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO calls (call_id, started, audit, usage) VALUES (?, ?, ?, ?)",
                (call_id, time.time(), audit, usage),
            )
        except sqlite3.Error as exc:
            self.failing = True
            raise OutboxError(f"outbox {self.path}: {exc}") from exc

    def progress_call(self, call_id: str, audit: bytes, usage: bytes) -> None:
        """Updates what is known of a call under way (e.g. the tokens streamed so far)."""
        try:
            self._db.execute(
                "UPDATE calls SET audit = ?, usage = ? WHERE call_id = ?", (audit, usage, call_id)
            )
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {self.path}: {exc}") from exc

    def end_call(self, call_id: str) -> None:
        """The call ended and its own events are in the outbox."""
        try:
            self._db.execute("DELETE FROM calls WHERE call_id = ?", (call_id,))
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {self.path}: {exc}") from exc

    def recover_calls(self) -> int:
        """At start: the calls a previous process left unfinished become events in the audit and
        usage lanes, in one transaction; returns how many."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            rows = self._db.execute("SELECT call_id, audit, usage FROM calls ORDER BY started").fetchall()
            now = time.time()
            for _, audit, usage in rows:
                self._db.execute(
                    "INSERT INTO outbox (lane, payload, created) VALUES ('audit', ?, ?)", (audit, now)
                )
                self._db.execute(
                    "INSERT INTO outbox (lane, payload, created) VALUES ('usage', ?, ?)", (usage, now)
                )
            self._db.execute("DELETE FROM calls")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return len(rows)

    def calls_under_way(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        self._db.close()
