"""Approvals over real gRPC on port 0 with mTLS: the router (its own certificate) opens one and
long-polls GetApproval; an approver decides over a bearer token; access and error codes."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import duration_pb2
from harness.audit.v1 import audit_pb2, audit_pb2_grpc
from harness.common.v1 import common_pb2
from prometheus_client import CollectorRegistry

from services.audit.config import AuditConfig
from services.audit.servicer import start_audit
from services.common.config import ServerConfig, TlsFiles
from services.common.server import open_channel
from services.devtools.certs import make_certs
from tests.helpers.grpc import user_metadata

S = audit_pb2


@pytest.fixture
async def audit(tmp_path, test_auth):
    certs = make_certs(tmp_path / "certs", services=("audit", "router", "ops"), agents=())

    def tls(name: str) -> TlsFiles:
        pair = certs.services[name]
        return TlsFiles(str(pair.cert), str(pair.key), str(certs.ca_cert))

    server = ServerConfig(name="audit", port=0, metrics_port=None, auth=test_auth, tls=tls("audit"))
    running = await start_audit(
        AuditConfig(server=server, db_url=f"sqlite:///{tmp_path / 'audit.db'}"),
        metrics_registry=CollectorRegistry(),
    )
    address = f"127.0.0.1:{running.port}"
    router = open_channel(address, tls("router"))
    yield audit_pb2_grpc.AuditStub(router), lambda: open_channel(address, tls("ops"))
    await router.close()
    await running.stop(0)


def ask(ttl_s: int = 300) -> S.RequestApprovalRequest:
    a = S.Approval(
        requester=common_pb2.Actor(user="alice", agent="rpa-bot", agent_version="v3"),
        correlation=common_pb2.Correlation(
            trace_id="t-ledger", session_id="s1", step_id="2", parent_event_id="tc1"
        ),
        tool="ledger",
        action="delete",
        risk=common_pb2.RISK_CLASS_DELETE,
        reason="ledger.delete requires approval",
    )
    a.arguments.update({"ledger": "FY2024"})
    return S.RequestApprovalRequest(approval=a, ttl=duration_pb2.Duration(seconds=ttl_s), request_key="tc1")


async def code(coro) -> grpc.StatusCode:
    try:
        await coro
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_router_requests_waits_and_an_approver_rejects(audit, mint_token):
    router, ops_channel = audit
    opened = (await router.RequestApproval(ask())).approval  # identity: the router's certificate
    assert opened.state == S.APPROVAL_STATE_PENDING and opened.requested_by == "router"
    again = (await router.RequestApproval(ask())).approval  # a retry with the same request_key
    assert again.id == opened.id

    wait = S.GetApprovalRequest(id=opened.id, wait=duration_pb2.Duration(seconds=20))
    waiter = asyncio.ensure_future(router.GetApproval(wait, timeout=25))
    await asyncio.sleep(0.2)
    assert not waiter.done()

    async with ops_channel() as ch:  # a person, over a bearer token
        people = audit_pb2_grpc.AuditStub(ch)
        bob = user_metadata(mint_token("bob", "approver"))
        pending = await people.ListApprovals(
            S.ListApprovalsRequest(state=S.APPROVAL_STATE_PENDING), metadata=bob
        )
        assert [a.id for a in pending.approvals] == [opened.id]
        decided = await people.DecideApproval(
            S.DecideApprovalRequest(id=opened.id, approve=False, comment="never delete a ledger"),
            metadata=bob,
        )
        assert decided.approval.state == S.APPROVAL_STATE_REJECTED and decided.approval.approver == "bob"

        got = (await asyncio.wait_for(waiter, 5)).approval
        assert (got.state, got.approver, got.comment) == (
            S.APPROVAL_STATE_REJECTED,
            "bob",
            "never delete a ledger",
        )

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await people.DecideApproval(S.DecideApprovalRequest(id=opened.id, approve=True), metadata=bob)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "rejected" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await people.DecideApproval(S.DecideApprovalRequest(id="missing", approve=True), metadata=bob)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        auditor = user_metadata(mint_token("carol", "auditor"))
        tree = await people.Lineage(S.LineageRequest(trace_id="t-ledger"), metadata=auditor)
        labels = []

        def walk(nodes):
            for n in nodes:
                labels.append(n.label)
                walk(n.children)

        walk(tree.roots)
        assert labels == [
            "user:alice",
            "agent:rpa-bot@v3",
            "step:2",
            "approval:ledger delete pending_approval",
            "approval:ledger delete deny by:bob",
        ]
        verdict = await people.Verify(S.VerifyRequest(), metadata=auditor)
        assert verdict.ok and verdict.checked == 2


async def test_access_and_expiry(audit, mint_token):
    router, ops_channel = audit
    short = (await router.RequestApproval(ask(ttl_s=1))).approval
    async with ops_channel() as ch:
        people = audit_pb2_grpc.AuditStub(ch)
        dave = user_metadata(mint_token("dave", "analyst"))
        admin = user_metadata(mint_token("root", "admin"))
        decide = S.DecideApprovalRequest(id=short.id, approve=True, comment="ok")
        assert await code(people.DecideApproval(decide, metadata=dave)) == grpc.StatusCode.PERMISSION_DENIED
        assert (
            await code(people.DecideApproval(decide)) == grpc.StatusCode.PERMISSION_DENIED
        )  # ops cert, no user
        assert await code(router.DecideApproval(decide)) == grpc.StatusCode.PERMISSION_DENIED  # a service
        listing = people.ListApprovals(S.ListApprovalsRequest(), metadata=dave)
        assert await code(listing) == grpc.StatusCode.PERMISSION_DENIED
        bad = S.RequestApprovalRequest(approval=S.Approval(tool="ledger"))
        assert await code(router.RequestApproval(bad)) == grpc.StatusCode.INVALID_ARGUMENT
        # An admin may open one too, for herself only, and may not decide it.
        assert await code(people.RequestApproval(ask(), metadata=admin)) == grpc.StatusCode.PERMISSION_DENIED
        own = ask()
        own.approval.requester.user = ""
        by_admin = await people.RequestApproval(own, metadata=admin)
        assert by_admin.approval.requested_by == "root" and by_admin.approval.requester.user == "root"
        mine = S.DecideApprovalRequest(id=by_admin.approval.id, approve=True)
        assert await code(people.DecideApproval(mine, metadata=admin)) == grpc.StatusCode.PERMISSION_DENIED

        # Nobody decided within the TTL: a long poll ends at the expiry, and deciding is refused.
        wait = S.GetApprovalRequest(id=short.id, wait=duration_pb2.Duration(seconds=10))
        got = (await router.GetApproval(wait, timeout=8)).approval
        assert got.state == S.APPROVAL_STATE_EXPIRED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await people.DecideApproval(decide, metadata=admin)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "expired" in err.value.details()
        expired = await people.ListApprovals(
            S.ListApprovalsRequest(state=S.APPROVAL_STATE_EXPIRED), metadata=admin
        )
        assert [a.id for a in expired.approvals] == [short.id]
