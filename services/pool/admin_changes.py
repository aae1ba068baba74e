"""The pool's admin changes and their ADMIN_CHANGE audit events: every endpoint registered or
removed, every deployment claimed or dropped, every scaling advice applied, and the changes the
pool makes on its own (agent warm-up and release, idle scale to zero; actor service `pool`).

`ChangeLog.record` writes a row before the RPC answers, so no change is acknowledged without a
row to ship; `AuditShipper` ships pending rows over Audit.Ingest (event ids are random per
change, so a resend is a duplicate, never a second record) and marks them shipped. The rows
live in the pool's database (`--db-url`) beside the claims; a pool without one keeps them in
memory, shipped as long as the process lives. Details name what changed, never a secret (an
endpoint's headers and TLS settings are pool-side configuration, never in the API).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from harness.audit.v1 import audit_pb2_grpc
from harness.common.v1 import common_pb2
from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import StaticPool

from services.common.admin_audit import (
    ChangeActor,
    change_row_event,
    insert_change,
    mark_changes_shipped,
    pending_changes,
)
from services.common.shipping import ShippingLoop, ingest_batch
from services.pool import migrate
from services.pool.claims_schema import AdminChangeRow

SOURCE = "pool"
POOL_ITSELF = ChangeActor(service="pool")  # changes the pool makes on its own (idle, agent warm-up)
BATCH = 200
log = logging.getLogger("harness.pool.audit")
T = AdminChangeRow.__table__


def memory_engine() -> Engine:
    """One in-memory SQLite database shared by every thread (the shipper reads in a worker)."""
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    migrate.upgrade(engine)
    return engine


class ChangeLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # One writer at a time: the in-memory database is one SQLite connection shared by the
        # worker threads, and two transactions on it at once fail ("cannot start a transaction
        # within a transaction": concurrent agent warm-ups did).
        self._write = threading.Lock()
        self._closed = False  # the engine is being disposed: no more use of it
        self.listeners: list[Callable[[], None]] = []  # told after each new row (the shipper)

    async def record(
        self, obj: str, action: str, details: dict[str, Any], actor: ChangeActor | None = None
    ) -> None:
        """Adds the change made by `actor`, by default the caller of the RPC being served (read
        here, in its context)."""
        actor = actor or ChangeActor.current()
        await asyncio.to_thread(self._insert, obj, action, details, actor)
        for wake in self.listeners:
            wake()

    def close(self) -> None:
        """Waits for the write or read in flight, then lets no other start: disposing the engine
        under a worker thread's statement crashes SQLite's C code (seen at a pool's stop)."""
        with self._write:
            self._closed = True

    def _insert(self, obj: str, action: str, details: dict[str, Any], a: ChangeActor) -> None:
        with self._write:
            if self._closed:
                log.warning("pool stopping: change not recorded: %s %s", action, obj)
                return
            with self.engine.begin() as conn:
                insert_change(conn, T, SOURCE, time.time_ns() // 1000, obj, action, details, a)

    def pending(self, limit: int) -> list:
        with self._write:
            if self._closed:
                return []
            with self.engine.connect() as conn:
                return pending_changes(conn, T, limit)

    def mark_shipped(self, ids: Sequence[int]) -> None:
        with self._write:
            if self._closed:
                return
            with self.engine.begin() as conn:
                mark_changes_shipped(conn, T, ids, time.time_ns() // 1000)


def audit_event(row) -> common_pb2.AuditEvent:
    return change_row_event(row, SOURCE)


class AuditShipper:
    """Ships the change log to the audit service, at least once, in order; retries with backoff
    while the audit service is away (the rows wait)."""

    def __init__(self, changes: ChangeLog, channel: grpc.aio.Channel, timeout_s: float = 10.0) -> None:
        self._changes = changes
        self._audit = audit_pb2_grpc.AuditStub(channel)
        self._timeout_s = timeout_s
        self._loop = ShippingLoop(
            self._step, name="pool-admin-audit", log=log,
            failing_message="pool changes cannot be shipped to the audit service (will retry): %s",
            recovered=lambda: "pool changes: audit service reachable again",
        )  # fmt: skip

    def start(self) -> None:
        self._changes.listeners.append(self._loop.wake)
        self._loop.start()

    async def stop(self) -> None:
        if self._loop.wake in self._changes.listeners:
            self._changes.listeners.remove(self._loop.wake)
        await self._loop.stop()

    async def _step(self) -> float | None:
        rows = await asyncio.to_thread(self._changes.pending, BATCH)
        if not rows:
            return None
        events = [audit_event(r) for r in rows]

        await ingest_batch(self._audit, events, self._timeout_s)
        await asyncio.to_thread(self._changes.mark_shipped, [r.id for r in rows])
        return 0 if len(rows) >= BATCH else None
