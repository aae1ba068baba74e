"""A shipping round's events go to Audit.Ingest in calls of at most MAX_BATCH_BYTES: the audit
service refuses a request over 16 MiB, so a round of 200 events with large details would be
refused on every retry and stop that feed for good."""

from __future__ import annotations

from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2

from services.common.shipping import MAX_BATCH_BYTES, bounded_prefix, ingest_batch


class RecordingAudit:
    """Audit's Ingest: keeps each call's events and answers as a receiver that has seen the
    ids in `seen` before."""

    def __init__(self, seen: frozenset[str] = frozenset()) -> None:
        self.calls: list[list[common_pb2.AuditEvent]] = []
        self.seen = seen

    async def Ingest(self, request: audit_pb2.IngestRequest, timeout=None) -> audit_pb2.IngestResponse:
        assert request.ByteSize() <= MAX_BATCH_BYTES + 1024  # one event's framing over, at most
        events = list(request.events)
        self.calls.append(events)
        dup = sum(e.event_id in self.seen for e in events)
        return audit_pb2.IngestResponse(accepted=len(events) - dup, duplicates=dup)


def big_event(i: int, size: int) -> common_pb2.AuditEvent:
    return common_pb2.AuditEvent(event_id=f"e{i}", action="x" * size)


def test_bounded_prefix_keeps_the_oldest_within_the_limit_and_never_none():
    assert bounded_prefix([], 10) == 0
    assert bounded_prefix([4, 4, 4], 10) == 2
    assert bounded_prefix([10, 1], 10) == 1
    assert bounded_prefix([25, 1], 10) == 1  # one over the limit still goes, alone
    assert bounded_prefix([1, 2, 3], 10) == 3


async def test_a_round_over_the_bound_goes_in_calls_within_it_oldest_first():
    audit = RecordingAudit(seen=frozenset({"e0", "e5"}))
    events = [big_event(i, MAX_BATCH_BYTES // 3) for i in range(7)]
    resp = await ingest_batch(audit, events, timeout_s=1.0)
    assert [len(call) for call in audit.calls] == [2, 2, 2, 1]
    assert [e.event_id for call in audit.calls for e in call] == [f"e{i}" for i in range(7)]
    assert (resp.accepted, resp.duplicates) == (5, 2)  # the calls' sums


async def test_a_small_round_is_one_call():
    audit = RecordingAudit()
    events = [common_pb2.AuditEvent(event_id=f"e{i}", action="invoke") for i in range(200)]
    resp = await ingest_batch(audit, events, timeout_s=1.0)
    assert [len(call) for call in audit.calls] == [200]
    assert resp.accepted == 200
    await ingest_batch(audit, [], timeout_s=1.0)
    assert len(audit.calls) == 1  # nothing to send: no call
