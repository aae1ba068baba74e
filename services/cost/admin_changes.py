"""The cost service's admin changes (prices, budgets) and their ADMIN_CHANGE audit events.

`record` writes a row in the change's own transaction, so no price or budget changes without a
row to ship; AlertDelivery's admin loop ships pending rows over Audit.Ingest (event ids are
random per change, so a resend is a duplicate, never a second record) and marks them shipped.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from harness.common.v1 import common_pb2
from sqlalchemy import insert, select, update

from services.common.admin_audit import ChangeActor, admin_change_event
from services.cost.models import admin_changes as T

SOURCE = "cost"


def record(conn, time_us: int, obj: str, action: str, details: dict[str, Any]) -> None:
    """Adds the change, made by the caller of the RPC being served, inside `conn`'s transaction."""
    a = ChangeActor.current()
    conn.execute(
        insert(T).values(
            event_id=f"cost-change-{uuid.uuid4().hex}", time_us=time_us, object=obj, action=action,
            actor_user=a.user, actor_agent=a.agent, actor_service=a.service, auth_method=a.auth_method,
            request_id=a.request_id, trace_id=a.trace_id, details=json.dumps(details, sort_keys=True),
            audit_shipped_us=0,
        )
    )  # fmt: skip


def pending(engine, limit: int) -> list:
    stmt = select(T).where(T.c.audit_shipped_us == 0).order_by(T.c.id).limit(limit)
    with engine.connect() as conn:
        return list(conn.execute(stmt).all())


def mark_shipped(write, ids: Sequence[int], now_us: int) -> None:
    with write() as conn, conn.begin():
        conn.execute(update(T).where(T.c.id.in_(list(ids))).values(audit_shipped_us=now_us))


def audit_event(row) -> common_pb2.AuditEvent:
    actor = ChangeActor(
        row.actor_user, row.actor_agent, row.actor_service, row.auth_method, row.request_id, row.trace_id
    )
    return admin_change_event(
        event_id=row.event_id, time_us=row.time_us, source=SOURCE, obj=row.object, action=row.action,
        actor=actor, details=json.loads(row.details),
    )  # fmt: skip
