"""End to end, governance: PII never reaches the audit log; the ledger story (a delete waits
for approval, is rejected, and one Lineage query tells who did what through which agent)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from harness.audit.v1 import audit_pb2, audit_pb2_grpc
from harness.common.v1 import common_pb2
from harness.router.v1 import router_pb2, router_pb2_grpc

from tests.e2e.calls import bearer as _bearer
from tests.e2e.calls import channel as _channel
from tests.e2e.calls import demo_channel as _demo_channel
from tests.e2e.calls import generate as _generate

pytestmark = pytest.mark.e2e


async def test_pii_in_a_prompt_never_reaches_the_audit_log(stack):
    """demo-agent's data policy masks phones and hashes resident IDs (compose/demo.yaml)."""
    alice = stack.token("alice")
    prompt = "请联系客户 13812345678，身份证 11010519491231002X，核对账户"
    async with _demo_channel(stack) as channel:
        messages = await _generate(channel, _bearer(alice), prompt=prompt, max_tokens=4)
        summary = messages[-1].summary
        audit = audit_pb2_grpc.AuditStub(channel)
        query = audit_pb2.QueryRequest(filter=audit_pb2.AuditFilter(request_id=summary.request_id))
        records = []
        for _ in range(50):
            records = (await audit.Query(query, metadata=_bearer(alice), timeout=10)).records
            if len(records) >= 2:
                break
            await asyncio.sleep(0.2)
    kinds = {r.event.kind for r in records}
    assert {common_pb2.AUDIT_EVENT_KIND_MODEL_CALL, common_pb2.AUDIT_EVENT_KIND_REDACTION} <= kinds
    call = next(r.event for r in records if r.event.kind == common_pb2.AUDIT_EVENT_KIND_MODEL_CALL)
    assert dict(call.details["redactions"]) == {"phone": 1.0, "cn_resident_id": 1.0}
    for r in records:
        assert "13812345678" not in str(r) and "11010519491231002X" not in str(r)


async def test_a_large_prompt_is_redacted_in_the_routers_worker_process(stack):
    """Over the inline budget (8 KB, 256 digits): the router hands it to a redaction worker."""
    alice = stack.token("alice")
    prompt = "".join(f"客户{13812340000 + i}请回电。" for i in range(400))  # ~8 KB, 400 phones
    async with _demo_channel(stack) as channel:
        messages = await _generate(channel, _bearer(alice), prompt=prompt, max_tokens=4)
        audit = audit_pb2_grpc.AuditStub(channel)
        query = audit_pb2.QueryRequest(
            filter=audit_pb2.AuditFilter(request_id=messages[-1].summary.request_id)
        )
        calls = []
        for _ in range(50):
            records = (await audit.Query(query, metadata=_bearer(alice), timeout=10)).records
            calls = [r.event for r in records if r.event.kind == common_pb2.AUDIT_EVENT_KIND_MODEL_CALL]
            if calls:
                break
            await asyncio.sleep(0.2)
    assert calls and dict(calls[0].details["redactions"]) == {"phone": 400.0}


async def test_a_tool_version_other_than_the_pinned_one_is_refused(stack):
    from google.protobuf import struct_pb2

    rpa = stack.root / "certs" / "agents"
    async with _channel(stack, rpa / "ledger-rpa.pem", rpa / "ledger-rpa.key") as agent_channel:
        args = struct_pb2.Struct()
        args.update({"ledger": "FY2024"})
        req = router_pb2.InvokeToolRequest(tool="ledger", version="3.x", action="delete", arguments=args)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await router_pb2_grpc.RouterStub(agent_channel).InvokeTool(
                req, metadata=_bearer(stack.token("alice")), timeout=10
            )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not version '3.x'" in err.value.details()


async def test_the_ledger_story_a_delete_waits_for_approval_is_rejected_and_lineage_tells_it(stack):
    """Issue 7's story: alice asks the RPA agent, which calls `delete` on the ledger tool; the
    call waits for approval, carol rejects it, and one Lineage query shows who, through which
    agent version and step, did what, what was decided, and by whom."""
    from google.protobuf import struct_pb2

    rpa = stack.root / "certs" / "agents"
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    alice = (*_bearer(stack.token("alice")), ("traceparent", f"00-{trace}-00f067aa0ba902b7-01"),
             ("x-harness-session-id", "close-2024"), ("x-harness-step-id", "7"))  # fmt: skip
    async with (
        _channel(stack, rpa / "ledger-rpa.pem", rpa / "ledger-rpa.key") as agent_channel,
        _channel(stack, Path(stack.env["HARNESS_CERT"]), Path(stack.env["HARNESS_KEY"])) as ops_channel,
    ):
        router = router_pb2_grpc.RouterStub(agent_channel)
        args = struct_pb2.Struct()
        args.update({"ledger": "FY2024", "reason": "duplicate"})
        req = router_pb2.InvokeToolRequest(tool="ledger", action="delete", arguments=args)
        req.approval_wait.FromSeconds(20)
        call = asyncio.ensure_future(router.InvokeTool(req, metadata=alice, timeout=30))

        audit = audit_pb2_grpc.AuditStub(ops_channel)
        carol = _bearer(stack.token("carol"))
        pending = []
        for _ in range(100):
            listed = await audit.ListApprovals(
                audit_pb2.ListApprovalsRequest(state=audit_pb2.APPROVAL_STATE_PENDING),
                metadata=carol,
                timeout=5,
            )
            pending = [
                a for a in listed.approvals if a.action == "delete" and a.requester.agent == "ledger-rpa"
            ]
            if pending:
                break
            await asyncio.sleep(0.1)
        assert pending and not call.done()  # the delete is waiting
        await audit.DecideApproval(
            audit_pb2.DecideApprovalRequest(id=pending[0].id, approve=False, comment="month not closed"),
            metadata=carol,
            timeout=5,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "rejected by carol: month not closed" in err.value.details()

        admin = _bearer(stack.token("alice"))
        tree = None
        for _ in range(50):  # events ship from the routers' outboxes within a second or so
            tree = await audit.Lineage(audit_pb2.LineageRequest(trace_id=trace), metadata=admin, timeout=5)
            labels = _labels(tree.roots)
            if any("by:carol" in label for label in labels) and any(x.startswith("tool:") for x in labels):
                break
            await asyncio.sleep(0.2)
    labels = _labels(tree.roots)
    assert "user:alice" in labels and "agent:ledger-rpa@v1" in labels and "step:7" in labels
    tool_calls = [label for label in labels if label.startswith("tool:ledger")]
    assert tool_calls and "delete" in tool_calls[0] and "deny" in tool_calls[0]
    assert any(label.startswith("approval:") and "by:carol" in label for label in labels)
    # The approvals hang under the tool call they decided (the router names it as their parent).
    call_node = next(n for n in _nodes(tree.roots) if n.label.startswith("tool:ledger"))
    assert any("by:carol" in label for label in _labels(call_node.children))


def _nodes(nodes) -> list:
    out = []
    for node in nodes:
        out.append(node)
        out.extend(_nodes(node.children))
    return out


def _labels(nodes) -> list[str]:
    out = []
    for node in nodes:
        out.append(node.label)
        out.extend(_labels(node.children))
    return out
