"""Audit service over a real gRPC channel: ingest, query, lineage, export, verify, access, approvals served."""

from __future__ import annotations

import csv
import io
import json

import grpc
import pytest
from google.protobuf import timestamp_pb2
from harness.audit.v1 import audit_pb2, audit_pb2_grpc
from harness.common.v1 import common_pb2
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, update

from services.audit.config import AuditConfig
from services.audit.models import audit_records
from services.audit.servicer import start_audit
from services.common.config import ServerConfig
from tests.helpers.audit import start_tls_audit
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


async def code(coro) -> grpc.StatusCode:
    try:
        await coro
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def batch(events) -> audit_pb2.IngestRequest:
    return audit_pb2.IngestRequest(events=events)


@pytest.fixture
async def audit(tmp_path, test_auth):
    """(reader stub over the CLI's certificate, metrics, writer stub over the router's)."""
    mesh = await start_tls_audit(tmp_path, test_auth)
    yield mesh.stub("cli"), mesh.metrics, mesh.stub("router")
    await mesh.close()


@pytest.fixture
def admin(mint_token):
    return user_metadata(mint_token("svc", "admin"))


async def test_ingest_dedups_resends_and_counts_metrics(audit, admin, mint_token):
    stub, registry, writer = audit
    first = await writer.Ingest(
        batch([event("e1"), event("e2", 1), event("e3", 2, tool="ledger", action="delete")])
    )
    assert (first.accepted, first.duplicates) == (3, 0)
    # The outbox resends after a lost ack: already-stored events are acknowledged, not stored.
    again = await writer.Ingest(batch([event("e2", 1), event("e3", 2), event("e4", 3)]))
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
    stub, _, writer = audit
    events = [event(f"e{i}", i, user="alice" if i % 2 else "bob") for i in range(7)]
    await writer.Ingest(batch(events))
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
    stub, _, writer = audit
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await writer.Ingest(batch([event("e1"), event("e2"), event("")]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event 2" in err.value.details() and "event_id" in err.value.details()
    # One transaction per batch: the good events before the bad one are not stored either.
    assert not (await stub.Query(audit_pb2.QueryRequest(), metadata=admin)).records
    with pytest.raises(grpc.aio.AioRpcError) as err:
        no_kind = event("e9", kind=common_pb2.AUDIT_EVENT_KIND_UNSPECIFIED)
        await writer.Ingest(batch([no_kind]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "event 0 (e9)" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Query(audit_pb2.QueryRequest(page=common_pb2.PageRequest(page_token="x")), metadata=admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_full_batch_is_one_call_and_the_message_bound_is_named(audit, admin):
    """The router ships up to 256 events per Ingest; a request over the 16 MiB message bound is
    refused as a whole with RESOURCE_EXHAUSTED."""
    stub, _, writer = audit
    full = [event(f"e{i}", i, rule="r" * 3000) for i in range(256)]  # ~3 KB each, as the router's
    got = await writer.Ingest(batch(full))
    assert (got.accepted, got.duplicates) == (256, 0)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await writer.Ingest(batch([event("huge", rule="x" * (17 << 20))]))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    page = common_pb2.PageRequest(page_size=1000)
    assert len((await stub.Query(audit_pb2.QueryRequest(page=page), metadata=admin)).records) == 256


async def test_access_rules(audit, admin, mint_token, tmp_path, test_auth):
    stub, _, writer = audit
    user = user_metadata(mint_token("dave", "analyst"))
    auditor = user_metadata(mint_token("carol", "auditor"))

    assert await code(stub.Query(audit_pb2.QueryRequest())) == grpc.StatusCode.PERMISSION_DENIED
    # Only the producing services, with their own certificate, append: never a person (an admin
    # included, over any channel), the CLI's certificate, another service or an agent.
    for who, md in (("user", user), ("auditor", auditor), ("admin", admin), ("nobody", None)):
        assert (
            await code(stub.Ingest(batch([event("x")]), metadata=md)) == grpc.StatusCode.PERMISSION_DENIED
        ), who
    assert await code(writer.Ingest(batch([event("x")]), metadata=admin)) == grpc.StatusCode.PERMISSION_DENIED
    plain = await start_audit(
        AuditConfig(
            server=ServerConfig(name="audit", port=0, metrics_port=None, auth=test_auth),
            db_url=f"sqlite:///{tmp_path / 'plain' / 'audit.db'}",
        ),
        metrics_registry=CollectorRegistry(),
    )
    async with grpc.aio.insecure_channel(plain.address) as ch:
        plain_stub = audit_pb2_grpc.AuditStub(ch)
        assert await code(plain_stub.Ingest(batch([event("x")]))) == grpc.StatusCode.UNAUTHENTICATED
        # An agent (certificate via Envoy) is not a Harness service: it may not forge audit events.
        agent_md = agent_metadata("ledger-bot")
        assert (
            await code(plain_stub.Ingest(batch([event("x")]), metadata=agent_md))
            == grpc.StatusCode.PERMISSION_DENIED
        )
    await plain.stop(0)
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


async def test_approval_rpcs_are_served(audit, admin):
    """Approvals are implemented (tests/integration/test_audit_approvals.py covers them)."""
    stub, _, _ = audit
    resp = await stub.ListApprovals(audit_pb2.ListApprovalsRequest(), metadata=admin)
    assert list(resp.approvals) == [] and resp.page.next_page_token == ""


def ledger_story() -> list[common_pb2.AuditEvent]:
    """One session: a model call, then a delete on the ledger that is held and rejected."""

    def ev(eid, second, kind, step, **f):
        parent = f.pop("parent_event_id", "")
        e = event(eid, second, kind=kind, trace_id=f.pop("trace_id", "t-ledger"), **f)
        e.correlation.parent_event_id = parent
        e.actor.agent_version = "v2"
        e.correlation.session_id = "s-ledger"
        e.correlation.step_id = step
        return e

    k = common_pb2
    return [
        ev("m1", 0, k.AUDIT_EVENT_KIND_MODEL_CALL, "1", model="llama-3-8b", action="invoke"),
        ev("tc1", 1, k.AUDIT_EVENT_KIND_TOOL_CALL, "2", tool="ledger", action="delete",
           object="tool:ledger", decision=k.DECISION_DENY),
        ev("az1", 2, k.AUDIT_EVENT_KIND_AUTHZ_DECISION, "2", parent_event_id="tc1", tool="ledger",
           action="delete", decision=k.DECISION_PENDING_APPROVAL, rule="p, role:rpa, finance, tool:ledger, delete"),
        ev("other", 3, k.AUDIT_EVENT_KIND_MODEL_CALL, "9", trace_id="t-other", model="llama-3-8b"),
    ]  # fmt: skip


async def test_lineage_tree_of_a_trace_and_a_session(audit, admin, mint_token):
    stub, _, writer = audit
    await writer.Ingest(batch(ledger_story()))
    auditor = user_metadata(mint_token("carol", "auditor"))
    resp = await stub.Lineage(audit_pb2.LineageRequest(trace_id="t-ledger"), metadata=auditor)
    assert resp.record_count == 3 and not resp.truncated
    [user] = resp.roots
    assert (user.label, user.kind) == ("user:alice", audit_pb2.LINEAGE_NODE_KIND_USER)
    [agent] = user.children
    assert agent.label == "agent:ledger-bot@v2" and agent.version == "v2"
    assert [s.label for s in agent.children] == ["step:1", "step:2"]
    [tool] = agent.children[1].children
    assert tool.kind == audit_pb2.LINEAGE_NODE_KIND_TOOL_CALL and tool.record.event.action == "delete"
    [decision] = tool.children
    assert decision.record.event.decision == common_pb2.DECISION_PENDING_APPROVAL
    assert decision.record.event.rule.startswith("p, role:rpa")

    by_session = await stub.Lineage(audit_pb2.LineageRequest(session_id="s-ledger"), metadata=auditor)
    assert by_session.record_count == 4
    assert [s.label for s in by_session.roots[0].children[0].children] == ["step:1", "step:2", "step:9"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Lineage(audit_pb2.LineageRequest(), metadata=auditor)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Lineage(
            audit_pb2.LineageRequest(trace_id="t-ledger"), metadata=user_metadata(mint_token("d"))
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def _export(stub, md, **kw) -> tuple[bytes, int]:
    data, n = b"", 0
    async for chunk in stub.Export(audit_pb2.ExportRequest(**kw), metadata=md):
        data += chunk.data
        n += 1
    return data, n


async def test_export_streams_jsonl_and_csv_with_filters(audit, admin, mint_token):
    stub, _, writer = audit
    await writer.Ingest(batch(ledger_story()))
    data, _ = await _export(stub, admin)
    rows = [json.loads(line) for line in data.decode().splitlines()]
    assert [r["id"] for r in rows] == ["m1", "tc1", "az1", "other"]
    assert [r["seq"] for r in rows] == [1, 2, 3, 4] and rows[1]["prev_hash"] == rows[0]["hash"]
    assert (
        rows[1]["resource"] == "tool:ledger" and rows[1]["decision"] == "deny" and rows[1]["step_id"] == "2"
    )
    flt = audit_pb2.AuditFilter(trace_id="t-ledger", tool="ledger")
    data, _ = await _export(stub, admin, filter=flt, format=audit_pb2.EXPORT_FORMAT_CSV)
    table = list(csv.DictReader(io.StringIO(data.decode())))
    assert [r["id"] for r in table] == ["tc1", "az1"] and table[1]["rule"].startswith("p, role:rpa")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _export(stub, user_metadata(mint_token("dave", "analyst")))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _export(stub, admin, format=7)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_export_of_many_records_comes_in_several_chunks(audit, admin):
    stub, _, writer = audit
    big = [event(f"e{i}", i, rule="x" * 400) for i in range(1500)]
    for part in (big[:700], big[700:]):
        await writer.Ingest(batch(part))
    data, n = await _export(stub, admin)
    assert n > 1 and len(data.splitlines()) == 1500


@pytest.fixture
async def audit_on(db_url, tmp_path, test_auth):
    """The service on SQLite and on PostgreSQL; yields (reader stub, db_url, writer stub)."""
    mesh = await start_tls_audit(tmp_path, test_auth, db_url)
    yield mesh.stub("cli"), db_url, mesh.stub("router")
    await mesh.close()


async def test_verify_names_a_record_changed_in_the_database(audit_on, admin):
    stub, db_url, writer = audit_on
    await writer.Ingest(batch(ledger_story()))
    ok = await stub.Verify(audit_pb2.VerifyRequest(), metadata=admin)
    assert ok.ok and ok.checked == 4 and ok.failure == audit_pb2.VERIFY_FAILURE_UNSPECIFIED
    # Someone with database access turns the refused delete into an allowed one.
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                update(audit_records)
                .where(audit_records.c.event_id == "tc1")
                .values(decision=common_pb2.DECISION_ALLOW)
            )
    finally:
        engine.dispose()
    verdict = await stub.Verify(audit_pb2.VerifyRequest(), metadata=admin)
    assert not verdict.ok and verdict.checked == 1
    assert (verdict.first_broken_sequence, verdict.first_broken_event_id) == (2, "tc1")
    assert verdict.failure == audit_pb2.VERIFY_FAILURE_HASH_MISMATCH
    assert verdict.found and verdict.expected and verdict.found != verdict.expected
    assert "record 2 (event tc1)" in verdict.reason


async def test_metrics_count_refused_ingests_verifications_and_pending_approvals(audit, admin):
    """What the audit alerts and the security dashboard read."""
    from tests.integration.test_audit_approvals import ask

    stub, registry, writer = audit
    assert registry.get_sample_value("harness_audit_ingest_rejected_total") == 0
    assert registry.get_sample_value("harness_audit_approvals_pending") == 0
    with pytest.raises(grpc.aio.AioRpcError):
        await writer.Ingest(batch([event("")]))
    assert registry.get_sample_value("harness_audit_ingest_rejected_total") == 1
    await writer.Ingest(batch([event("e1")]))
    assert registry.get_sample_value("harness_audit_ingest_rejected_total") == 1  # a good one is not
    await stub.Verify(audit_pb2.VerifyRequest(), metadata=admin)
    assert registry.get_sample_value("harness_audit_chain_verifications_total", {"result": "ok"}) == 1
    await writer.RequestApproval(ask())  # the router opens it for the user it serves
    assert registry.get_sample_value("harness_audit_approvals_pending") == 1
