"""An event is serialized once, by `emit_*`: the outbox keeps those bytes and the shipping lanes send
them as they are (packed into the Ingest / Record request), never parsed and serialized again."""

from __future__ import annotations

import asyncio

from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2
from prometheus_client import CollectorRegistry

from services.router.events import EventShipper, packed_events
from services.router.outbox import Outbox


class RecordingChannel:
    """A channel that keeps the bytes each unary call would put on the wire."""

    def __init__(self) -> None:
        self.sent: dict[str, list[bytes]] = {}

    def unary_unary(self, path: str, request_serializer=None, response_deserializer=None, **_):
        async def call(request, timeout=None):
            wire = request if request_serializer is None else request_serializer(request)
            self.sent.setdefault(path, []).append(wire)
            return response_deserializer(b"")

        return call


class CountedEvent:
    """Stands in for an event message: counts how often it is serialized."""

    def __init__(self, message) -> None:
        self.message, self.serialized = message, 0

    def SerializeToString(self) -> bytes:  # protobuf's name
        self.serialized += 1
        return self.message.SerializeToString()


def test_packed_events_is_the_request_protobuf_would_build():
    events = [common_pb2.AuditEvent(event_id=f"e{i}", action="x" * 200 * i) for i in range(3)]
    packed = packed_events([e.SerializeToString() for e in events])
    assert audit_pb2.IngestRequest.FromString(packed) == audit_pb2.IngestRequest(events=events)
    assert packed == audit_pb2.IngestRequest(events=events).SerializeToString()
    assert packed_events([]) == b""
    usage = [common_pb2.UsageEvent(event_id="u1")]
    packed_usage = packed_events([u.SerializeToString() for u in usage], cost_pb2.RecordRequest)
    assert packed_usage == cost_pb2.RecordRequest(events=usage).SerializeToString()


async def test_each_event_is_serialized_once_and_shipped_as_the_bytes_the_outbox_holds():
    audit_channel, cost_channel = RecordingChannel(), RecordingChannel()
    outbox = Outbox(":memory:")
    shipper = EventShipper(audit_channel, cost_channel, CollectorRegistry(), outbox, linger_s=0)
    audit = CountedEvent(common_pb2.AuditEvent(event_id="a1", action="invoke", status="OK"))
    usage = CountedEvent(common_pb2.UsageEvent(event_id="u1", model="m"))
    shipper.emit_audit(audit)
    shipper.emit_usage(usage)
    stored = {lane: [p for _, p in outbox.peek(lane, 10)] for lane in ("audit", "usage")}
    assert stored == {
        "audit": [audit.message.SerializeToString()],
        "usage": [usage.message.SerializeToString()],
    }
    shipper.start()
    for _ in range(200):
        if not outbox.pending("audit") and not outbox.pending("usage"):
            break
        await asyncio.sleep(0.01)
    await shipper.drain(timeout=1.0)
    assert (audit.serialized, usage.serialized) == (1, 1)
    assert audit_channel.sent == {"/harness.audit.v1.Audit/Ingest": [packed_events(stored["audit"])]}
    assert cost_channel.sent == {
        "/harness.cost.v1.Cost/Record": [packed_events(stored["usage"], cost_pb2.RecordRequest)]
    }
    assert cost_pb2.RecordRequest.FromString(cost_channel.sent["/harness.cost.v1.Cost/Record"][0]).events == [
        usage.message
    ]
