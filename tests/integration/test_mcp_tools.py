"""MCP servers as catalog tools: a ledger MCP server (built with the `mcp` SDK) imported as a
tool's actions and called through the governed path (pins, policy, approvals, redaction, cache,
audit), bounded by the call's deadline."""

from __future__ import annotations

import pytest
import pytest_asyncio
from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2

from services.common import context as reqctx
from services.common.errors import DeadlineExceeded, PermissionDenied, Unavailable
from services.common.mcp_client import catalog_actions, list_tools
from services.router.privacy import AgentRedactors
from services.router.result_cache import MemoryResultCache
from services.router.tools import ToolCall, ToolInvoker
from tests.helpers.mcp_ledger import McpLedger
from tests.integration.test_router_tools import Events, FakeRegistry, Gate, rpa_agent


@pytest_asyncio.fixture
async def world():
    server = await McpLedger().start()
    actions = catalog_actions(await list_tools(server.endpoint, timeout_s=10))
    tool = registry_pb2.Tool(name="books", version="1", endpoint=server.endpoint, actions=actions)
    registry, events, gate = FakeRegistry(tool), Events(), Gate(audit_pb2.APPROVAL_STATE_REJECTED)
    registry.agents = {"rpa": rpa_agent(tools=("books@1",))}
    invoker = ToolInvoker(registry, events, AgentRedactors(), gate, MemoryResultCache(), http_timeout_s=5.0)
    reqctx.set_current(reqctx.new_context(reqctx.Identity(agent="rpa", user="alice")))
    try:
        yield invoker, server, tool, events, gate
    finally:
        await server.stop()


async def test_import_maps_read_only_to_read_and_everything_else_to_approved_writes(world):
    _, _, tool, _, _ = world
    by_name = {a.name: a for a in tool.actions}
    assert sorted(by_name) == ["ledger.delete", "ledger.hang", "ledger.read"]
    read, delete = by_name["ledger.read"], by_name["ledger.delete"]
    assert read.risk == common_pb2.RISK_CLASS_READ and read.idempotent and not read.requires_approval
    assert delete.risk == common_pb2.RISK_CLASS_WRITE and delete.requires_approval
    assert by_name["ledger.hang"].requires_approval  # no hints: the safe default


async def test_a_read_goes_to_the_mcp_server_redacted_and_audited(world):
    invoker, server, _, events, _ = world
    outcome = await invoker.invoke(ToolCall("books", "ledger.read", {"ledger": "2024"}))
    assert server.calls == [("ledger.read", {"ledger": "2024"})]
    assert outcome.result == {"ledger": "2024", "balance": 1200, "owner_phone": "[PHONE]"}
    record = events.audit[-1]
    assert record.kind == common_pb2.AUDIT_EVENT_KIND_TOOL_CALL and record.status == "OK"
    assert record.tool == "books@1" and "13812345678" not in str(record)


async def test_a_rejected_delete_never_reaches_the_mcp_server(world):
    invoker, server, *_ = world
    with pytest.raises(PermissionDenied, match="rejected by carol: not today"):
        await invoker.invoke(ToolCall("books", "ledger.delete", {"ledger": "2024"}))
    assert server.calls == []


async def test_a_hanging_mcp_server_is_bounded_by_the_calls_deadline(world):
    invoker, server, _, events, gate = world
    gate.state = audit_pb2.APPROVAL_STATE_APPROVED
    invoker.http_timeout_s = 3.0
    with pytest.raises(DeadlineExceeded, match="did not answer within 3s"):
        await invoker.invoke(ToolCall("books", "ledger.hang", {}))
    assert server.calls == [("ledger.hang", {})]
    assert events.audit[-1].status == "DEADLINE_EXCEEDED"


async def test_an_unreachable_mcp_server_is_unavailable(world):
    invoker, server, *_ = world
    await server.stop()
    with pytest.raises(Unavailable, match=r"the MCP server at http://127\.0\.0\.1"):
        await invoker.invoke(ToolCall("books", "ledger.read", {"ledger": "2024"}))
