"""ADMIN_CHANGE audit events, the same shape from every service that records admin changes.

Each service keeps its changes in its own durable outbox (the registry's change log, the cost
service's admin_changes table), written in the transaction of the change itself, and ships them
over Audit.Ingest with a ShippingLoop (services/common/shipping.py). Details name what changed
(kinds, names, limits), never secrets. The outbox tables share one column layout (event_id,
time_us, object, action, the actor's columns, details as JSON, audit_shipped_us: 0 until
shipped); the functions at the end write, read and mark them for every service.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2
from harness.common.v1 import common_pb2
from sqlalchemy import Table, insert, select, update

from services.common import context as reqctx


@dataclass(frozen=True)
class ChangeActor:
    """Who made a change, as the call's identity established it; ids of the call."""

    user: str = ""
    agent: str = ""
    service: str = ""
    auth_method: str = ""
    request_id: str = ""
    trace_id: str = ""

    @classmethod
    def current(cls) -> ChangeActor:
        """The caller of the RPC being served."""
        ctx = reqctx.current()
        i = ctx.identity
        return cls(i.user, i.agent, i.service, i.auth_method, ctx.request_id, ctx.trace_id)


def admin_change_event(
    *,
    event_id: str,
    time_us: int,
    source: str,
    obj: str,
    action: str,
    actor: ChangeActor,
    details: dict[str, Any],
) -> common_pb2.AuditEvent:
    time = timestamp_pb2.Timestamp()
    time.FromMicroseconds(time_us)
    body = struct_pb2.Struct()
    body.update({**details, **({"service": actor.service} if actor.service else {})})
    return common_pb2.AuditEvent(
        event_id=event_id,
        time=time,
        kind=common_pb2.AUDIT_EVENT_KIND_ADMIN_CHANGE,
        actor=common_pb2.Actor(user=actor.user, agent=actor.agent, auth_method=actor.auth_method),
        correlation=common_pb2.Correlation(request_id=actor.request_id, trace_id=actor.trace_id),
        object=obj,
        action=action,
        decision=common_pb2.DECISION_ALLOW,
        status="OK",
        source=source,
        details=body,
    )


def insert_change(
    conn, table: Table, source: str, time_us: int, obj: str, action: str, details: dict[str, Any],
    actor: ChangeActor,
) -> None:  # fmt: skip
    """Adds one change row inside `conn`'s transaction; its event id is random, so a resend of
    the shipped event is a duplicate, never a second record."""
    a = actor
    conn.execute(
        insert(table).values(
            event_id=f"{source}-change-{uuid.uuid4().hex}", time_us=time_us, object=obj, action=action,
            actor_user=a.user, actor_agent=a.agent, actor_service=a.service, auth_method=a.auth_method,
            request_id=a.request_id, trace_id=a.trace_id, details=json.dumps(details, sort_keys=True),
            audit_shipped_us=0,
        )
    )  # fmt: skip


def pending_changes(conn, table: Table, limit: int) -> list:
    """The oldest `limit` rows not shipped yet, in the order they were written."""
    stmt = select(table).where(table.c.audit_shipped_us == 0).order_by(table.c.id).limit(limit)
    return list(conn.execute(stmt).all())


def mark_changes_shipped(conn, table: Table, ids: Sequence[int], now_us: int) -> None:
    conn.execute(update(table).where(table.c.id.in_(list(ids))).values(audit_shipped_us=now_us))


def change_row_event(row, source: str) -> common_pb2.AuditEvent:
    """The ADMIN_CHANGE event a stored change row ships as."""
    actor = ChangeActor(
        row.actor_user, row.actor_agent, row.actor_service, row.auth_method, row.request_id, row.trace_id
    )
    return admin_change_event(
        event_id=row.event_id, time_us=row.time_us, source=source, obj=row.object, action=row.action,
        actor=actor, details=json.loads(row.details),
    )  # fmt: skip
