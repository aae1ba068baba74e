"""The audit feed: ships every registry change to the audit service as an ADMIN_CHANGE event.

The change log is the durable outbox: a change row commits with the entity it describes, so
nothing can change without a row to ship. The feed reads rows after its cursor (a one-row table,
moved forward after each acknowledged batch), in revision order, up to `batch_size` at a time,
and sends them over `Audit.Ingest`. Event ids are `registry-change-<revision>`, so a batch sent
again after a lost acknowledgement, a crash before the cursor moved, or by a second registry
replica on the same database is acknowledged as duplicates, never stored twice.

While the audit service is unreachable the feed retries with exponential backoff (capped); the
changes wait in the log. It wakes at once after this process's commits (a commit listener) and
polls every `poll_s` for other replicas' writes. Only ids and names are sent: an API key change
names the key id, never its secret (which the registry does not keep anyway).
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from harness.audit.v1 import audit_pb2_grpc
from harness.common.v1 import common_pb2

from services.common.admin_audit import ChangeActor, admin_change_event
from services.common.shipping import ShippingLoop, ingest_batch
from services.registry import convert_rows as rows
from services.registry.models import ChangeRow
from services.registry.store import Store

log = logging.getLogger("harness.registry.audit")

EVENT_PREFIX = "registry-change-"
SOURCE = "registry"


def event_id(revision: int) -> str:
    return f"{EVENT_PREFIX}{revision}"


def change_event(change: ChangeRow) -> common_pb2.AuditEvent:
    """The ADMIN_CHANGE event for one change row."""
    actor = ChangeActor(
        change.actor_user, change.actor_agent, change.actor_service, change.auth_method,
        change.request_id, change.trace_id,
    )  # fmt: skip
    return admin_change_event(
        event_id=event_id(change.revision),
        time_us=round(rows.utc(change.time).timestamp() * 1_000_000),
        source=SOURCE,
        obj=f"{change.kind}:{change.key}",
        action=change.action or ("delete" if change.deleted else "update"),
        actor=actor,
        details={
            "revision": change.revision, "kind": change.kind, "key": change.key, "deleted": bool(change.deleted),
        },
    )  # fmt: skip


class AuditFeed:
    """One background task per registry process; `start` in the serving loop, `stop` at shutdown."""

    def __init__(
        self,
        store: Store,
        channel: grpc.aio.Channel,
        *,
        batch_size: int = 200,
        poll_s: float = 1.0,
        min_backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
        timeout_s: float = 10.0,
    ) -> None:
        self._store = store
        self._channel = channel
        self._stub = audit_pb2_grpc.AuditStub(channel)
        self._batch = batch_size
        self._timeout_s = timeout_s
        self._loop = ShippingLoop(
            self._step,
            name="registry-audit-feed",
            log=log,
            poll_s=poll_s,
            min_backoff_s=min_backoff_s,
            max_backoff_s=max_backoff_s,
            failing_message="registry audit feed cannot ship changes (will retry): %s",
            recovered=lambda: f"registry audit feed reconnected; shipped up to revision {self.shipped}",
        )
        self._unlisten = store.add_commit_listener(self._committed)
        self.shipped = 0  # cursor as last known here (tests, logs)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        self._unlisten()
        await self._loop.stop()

    def _committed(self, revision: int) -> None:
        """Commit listener; runs in the store's worker thread."""
        self._loop.wake()

    async def _step(self) -> float | None:
        sent = await self._ship_once()
        return 0 if sent >= self._batch else None  # a full batch: more is waiting

    async def _ship_once(self) -> int:
        """Ships one batch after the cursor; returns how many changes it held."""
        cursor = await asyncio.to_thread(self._store.audit_cursor)
        changes = await asyncio.to_thread(self._store.change_records, cursor, self._batch)
        if not changes:
            self.shipped = cursor
            return 0
        if changes[0].revision > cursor + 1 and cursor:
            log.warning(
                "registry audit feed: revisions %d..%d were compacted before they were shipped",
                cursor + 1,
                changes[0].revision - 1,
            )
        events = [change_event(c) for c in changes]

        resp = await ingest_batch(self._stub, events, self._timeout_s)
        self.shipped = await asyncio.to_thread(self._store.set_audit_cursor, changes[-1].revision)
        log.debug(
            "registry audit feed: revisions %d..%d (%d new, %d resent)",
            changes[0].revision,
            changes[-1].revision,
            resp.accepted,
            resp.duplicates,
        )
        return len(changes)
