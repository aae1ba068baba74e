"""Audit service over a real gRPC channel: client-stream ingest, query, verify, access, planned RPCs."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import timestamp_pb2
from harness.audit.v1 import audit_pb2, audit_pb2_grpc
from harness.common.v1 import common_pb2
from prometheus_client import CollectorRegistry

from services.audit.config import AuditConfig
from services.audit.servicer import start_audit
from services.common.config import ServerConfig
from tests.helpers.grpc import agent_metadata, user_metadata

T0 = 1_714_564_800


def event(event_id: str, second: int = 0, **fields) -> common_pb2.AuditEvent:
    return common_pb2.AuditEvent(
        event_id=event_id,
        time=timestamp_pb2.Timestamp(seconds=T0 + second),
        kind=fields.pop("kind", common_pb2.AUDIT_EVENT_KIND_TOOL_CALL),
        actor=common_pb2.Actor(user=fields.pop("user", "alice"), agent="ledger-bot"),
        correlation=common_pb2.Correlation(trace_id=fields.pop("trace_id", "t1")),
        source="router",
        **fields,
    )


def batches(*groups):
    async def gen():
        for group in groups:
            yield audit_pb2.IngestRequest(events=group)

    return gen()


@pytest.fixture
async def audit(tmp_path, test_auth):
    registry = CollectorRegistry()
    config = AuditConfig(
        server=ServerConfig(name="audit", port=0, metrics_port=None, auth=test_auth),
        db_url=f"sqlite:///{tmp_path / 'state' / 'audit.db'}",  # directory does not exist yet
    )
    running = await start_audit(config, metrics_registry=registry)
    channel = grpc.aio.insecure_channel(running.address)
    yield audit_pb2_grpc.AuditStub(channel), registry
    await channel.close()
    await running.stop(grace=0)


@pytest.fixture
def admin(mint_token):
    return user_metadata(mint_token("svc", "admin"))


async def test_ingest_stream_dedups_resends_and_counts_metrics(audit, admin, mint_token):
    stub, registry = audit
    first = await stub.Ingest(
        batches([event("e1"), event("e2", 1)], [event("e3", 2, tool="ledger", action="delete")]),
        metadata=admin,
    )
    assert (first.accepted, first.duplicates) == (3, 0)
    # The outbox resends after a lost ack: already-stored events are acknowledged, not stored.
    again = await stub.Ingest(batches([event("e2", 1), event("e3", 2)], [event("e4", 3)]), metadata=admin)
    assert (again.accepted, again.duplicates) == (1, 2)
    assert registry.get_sample_value("harness_audit_records_total") == 4
    assert registry.get_sample_value("harness_audit_duplicates_total") == 2

    auditor = user_metadata(mint_token("carol", "auditor"))
    resp = await stub.Query(audit_pb2.QueryRequest(), metadata=auditor)
    assert [r.event.event_id for r in resp.records] == ["e1", "e2", "e3", "e4"]
    assert [r.sequence for r in resp.records] == [1, 2, 3, 4]
    assert resp.records[2].event.tool == "ledger" and resp.records[2].prev_hash == resp.records[1].hash
    assert resp.records[0].ingest_time.seconds > 0

    verdict = await stub.Verify(audit_pb2.VerifyRequest(), metadata=auditor)
    assert verdict.ok and verdict.checked == 4 and verdict.first_broken_sequence == 0


async def test_query_filters_and_pages(audit, admin):
    stub, _ = audit
    events = [event(f"e{i}", i, user="alice" if i % 2 else "bob") for i in range(7)]
    await stub.Ingest(batches(events), metadata=admin)
    flt = audit_pb2.AuditFilter(user="alice", start_time=timestamp_pb2.Timestamp(seconds=T0 + 2))
    page = common_pb2.PageRequest(page_size=1)
    resp = await stub.Query(audit_pb2.QueryRequest(filter=flt, page=page), metadata=admin)
    assert [r.event.event_id for r in resp.records] == ["e3"]
    assert resp.page.next_page_token == str(resp.records[0].sequence)
    page.page_token = resp.page.next_page_token
    rest = await stub.Query(audit_pb2.QueryRequest(filter=flt, page=page), metadata=admin)
    assert [r.event.event_id for r in rest.records] == ["e5"]
    assert rest.page.next_page_token == ""


async def test_bad_events_are_refused_naming_the_index(audit, admin):
    stub, _ = audit
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Ingest(batches([event("e1")], [event("e2"), event("")]), metadata=admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event 2" in err.value.details() and "event_id" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        no_kind = event("e9", kind=common_pb2.AUDIT_EVENT_KIND_UNSPECIFIED)
        await stub.Ingest(batches([no_kind]), metadata=admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "event 0 (e9)" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Query(audit_pb2.QueryRequest(page=common_pb2.PageRequest(page_token="x")), metadata=admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_access_rules(audit, admin, mint_token):
    stub, _ = audit
    user = user_metadata(mint_token("dave", "analyst"))
    auditor = user_metadata(mint_token("carol", "auditor"))

    async def code(coro) -> grpc.StatusCode:
        try:
            await coro
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    assert await code(stub.Ingest(batches([event("x")]))) == grpc.StatusCode.UNAUTHENTICATED
    assert await code(stub.Query(audit_pb2.QueryRequest())) == grpc.StatusCode.UNAUTHENTICATED
    assert await code(stub.Ingest(batches([event("x")]), metadata=user)) == grpc.StatusCode.PERMISSION_DENIED
    # An agent (certificate via Envoy) is not a Harness service: it may not forge audit events.
    agent_md = agent_metadata("ledger-bot")
    assert (
        await code(stub.Ingest(batches([event("x")]), metadata=agent_md)) == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await code(stub.Ingest(batches([event("x")]), metadata=auditor)) == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await code(stub.Query(audit_pb2.QueryRequest(), metadata=user)) == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await code(stub.Verify(audit_pb2.VerifyRequest(), metadata=user)) == grpc.StatusCode.PERMISSION_DENIED
    )
    assert await code(stub.Query(audit_pb2.QueryRequest(), metadata=auditor)) == grpc.StatusCode.OK
    assert await code(stub.Verify(audit_pb2.VerifyRequest(), metadata=admin)) == grpc.StatusCode.OK
    # Refused writes stored nothing.
    assert (await stub.Query(audit_pb2.QueryRequest(), metadata=auditor)).records == []


async def test_planned_rpcs_name_their_feature(audit, admin):
    stub, _ = audit
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Lineage(audit_pb2.LineageRequest(trace_id="t1"), metadata=admin)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "lineage" in err.value.details() and "#7" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Export(audit_pb2.ExportRequest(), metadata=admin):
            pass
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED and "export" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListApprovals(audit_pb2.ListApprovalsRequest(), metadata=admin)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED and "approvals" in err.value.details()
