"""ADMIN_CHANGE audit events, the same shape from every service that records admin changes.

Each service keeps its changes in its own durable outbox (the registry's change log, the cost
service's admin_changes table), written in the transaction of the change itself, and ships them
over Audit.Ingest with a ShippingLoop (services/common/shipping.py). Details name what changed
(kinds, names, limits), never secrets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2
from harness.common.v1 import common_pb2

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
