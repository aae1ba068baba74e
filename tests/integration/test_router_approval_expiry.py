"""A governed tool call whose approval nobody decides in time: the router's ToolInvoker against
a real audit service (mTLS, the router's certificate). The approval lives exactly as long as the
caller waits; the caller gets DEADLINE_EXCEEDED naming the expired approval; an approver deciding
later gets FAILED_PRECONDITION "expired" (nothing would run); the log says so."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2

from services.common import context as reqctx
from services.common.errors import DeadlineExceeded
from services.router.privacy import AgentRedactors
from services.router.result_cache import MemoryResultCache
from services.router.tools import AuditApprovals, ToolCall, ToolInvoker
from tests.helpers.audit import start_tls_audit
from tests.helpers.grpc import user_metadata
from tests.integration.test_router_tools import Events, FakeRegistry, ToolServer, ledger


async def test_an_approval_nobody_decides_expires_with_the_callers_wait(tmp_path, test_auth, mint_token):
    mesh = await start_tls_audit(tmp_path, test_auth)
    server = ToolServer()
    events = Events()
    invoker = ToolInvoker(
        FakeRegistry(ledger(server.url)), events, AgentRedactors(), AuditApprovals(mesh.stub("router")),
        MemoryResultCache(),
    )  # fmt: skip
    reqctx.set_current(reqctx.new_context(reqctx.Identity(agent="rpa", user="alice")))
    try:
        with pytest.raises(DeadlineExceeded, match=r"nobody decided in time: approval \S+ expired"):
            await invoker.invoke(ToolCall("ledger", "delete", {"ledger": "2024"}, approval_wait_s=0.5))
        assert server.calls == []
        record = events.audit[-1]
        assert record.status == "DEADLINE_EXCEEDED" and record.decision == common_pb2.DECISION_DENY
        approval_id = record.details["approval_id"]

        people = mesh.stub("cli")
        carol = user_metadata(mint_token("carol", "approver"))
        got = (
            await people.GetApproval(audit_pb2.GetApprovalRequest(id=approval_id), metadata=carol)
        ).approval
        assert got.state == audit_pb2.APPROVAL_STATE_EXPIRED
        assert got.expire_time.ToMicroseconds() - got.create_time.ToMicroseconds() == 500_000
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await people.DecideApproval(
                audit_pb2.DecideApprovalRequest(id=approval_id, approve=True), metadata=carol
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "expired" in err.value.details()
        flt = audit_pb2.AuditFilter(kind=common_pb2.AUDIT_EVENT_KIND_APPROVAL)
        listed = await people.Query(
            audit_pb2.QueryRequest(filter=flt), metadata=user_metadata(mint_token("a", "auditor"))
        )
        assert [r.event.details["event"] for r in listed.records] == ["requested", "expired"]
    finally:
        server.httpd.shutdown()
        await mesh.close()


async def test_the_service_sweeps_expired_approvals_into_the_log(
    tmp_path, test_auth, mint_token, monkeypatch
):
    """Nobody polls and nobody decides: the audit service's own sweep records the expiry."""
    monkeypatch.setattr("services.audit.servicer.EXPIRY_SWEEP_S", 0.2)
    mesh = await start_tls_audit(tmp_path, test_auth)
    try:
        req = audit_pb2.RequestApprovalRequest(
            approval=audit_pb2.Approval(
                tool="ledger", action="delete", requester=common_pb2.Actor(user="alice")
            )
        )
        req.ttl.FromMilliseconds(300)
        opened = (await mesh.stub("router").RequestApproval(req)).approval
        flt = audit_pb2.AuditFilter(kind=common_pb2.AUDIT_EVENT_KIND_APPROVAL)
        auditor = user_metadata(mint_token("a", "auditor"))
        people = mesh.stub("cli")
        for _ in range(100):
            listed = await people.Query(audit_pb2.QueryRequest(filter=flt), metadata=auditor)
            if len(listed.records) == 2:
                break
            await asyncio.sleep(0.1)
        assert [r.event.event_id for r in listed.records] == [
            f"approval-{opened.id}-requested", f"approval-{opened.id}-expired",
        ]  # fmt: skip
    finally:
        await mesh.close()
