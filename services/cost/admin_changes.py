"""The cost service's admin changes (prices, budgets) and their ADMIN_CHANGE audit events.

`record` writes a row in the change's own transaction, so no price or budget changes without a
row to ship; AlertDelivery's admin loop ships pending rows over Audit.Ingest (event ids are
random per change, so a resend is a duplicate, never a second record) and marks them shipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.common.v1 import common_pb2

from services.common.admin_audit import (
    ChangeActor,
    change_row_event,
    insert_change,
    mark_changes_shipped,
    pending_changes,
)
from services.cost.models import admin_changes as T

SOURCE = "cost"


def record(conn, time_us: int, obj: str, action: str, details: dict[str, Any]) -> None:
    """Adds the change, made by the caller of the RPC being served, inside `conn`'s transaction."""
    insert_change(conn, T, SOURCE, time_us, obj, action, details, ChangeActor.current())


def pending(engine, limit: int) -> list:
    with engine.connect() as conn:
        return pending_changes(conn, T, limit)


def mark_shipped(write, ids: Sequence[int], now_us: int) -> None:
    with write() as conn, conn.begin():
        mark_changes_shipped(conn, T, ids, now_us)


def audit_event(row) -> common_pb2.AuditEvent:
    return change_row_event(row, SOURCE)
