"""MCP servers as catalog tools: a ledger MCP server (built with the `mcp` SDK) imported as a
tool's actions and called through the governed path (pins, policy, approvals, redaction, cache,
audit), bounded by the call's deadline."""

from __future__ import annotations

import json

import pytest
import pytest_asyncio
from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2

from services.common import context as reqctx
from services.common.errors import DeadlineExceeded, InvalidArgument, NotFound, PermissionDenied, Unavailable
from services.common.mcp_client import catalog_actions, list_tools
from services.router.privacy import AgentRedactors
from services.router.result_cache import MemoryResultCache
from services.router.tool_upstream import Credentials
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
    invoker.settings.http_timeout_s = 3.0
    with pytest.raises(DeadlineExceeded, match="did not answer within 3s"):
        await invoker.invoke(ToolCall("books", "ledger.hang", {}))
    assert server.calls == [("ledger.hang", {})]
    assert events.audit[-1].status == "DEADLINE_EXCEEDED"


async def test_an_unreachable_mcp_server_is_unavailable(world):
    invoker, server, *_ = world
    await server.stop()
    with pytest.raises(Unavailable, match=r"the MCP server at http://127\.0\.0\.1"):
        await invoker.invoke(ToolCall("books", "ledger.read", {"ledger": "2024"}))


async def test_arguments_are_checked_against_the_imported_schema_before_the_server_sees_them(world):
    invoker, server, tool, events, _ = world
    read = next(a for a in tool.actions if a.name == "ledger.read")
    assert (
        json.loads(read.input_schema)["required"] == ["ledger"]
        and read.description == "Read a ledger's balance"
    )
    with pytest.raises(InvalidArgument) as wrong:
        await invoker.invoke(ToolCall("books", "ledger.read", {"ledger": 2024}))
    assert (
        "arguments of books.ledger.read do not match its input schema: arguments.ledger: 2024 is not of type 'string'"
        in wrong.value.message
    )
    with pytest.raises(InvalidArgument, match="'ledger' is a required property"):
        await invoker.invoke(ToolCall("books", "ledger.read", {}))
    assert server.calls == [] and events.audit == []


async def test_an_upstream_credential_goes_to_the_server_and_nowhere_else():
    token = "s3cr3t-upstream-token"
    server = await McpLedger(token=token).start()
    try:
        with pytest.raises(Unavailable):  # the server wants its token to list its tools too
            await list_tools(server.endpoint, timeout_s=10)
        listed = await list_tools(server.endpoint, timeout_s=10, headers={"authorization": f"Bearer {token}"})
        tool = registry_pb2.Tool(
            name="books", version="1", endpoint=server.endpoint, credential="books-token"
        )
        tool.actions.extend(catalog_actions(listed))
        registry, events = FakeRegistry(tool), Events()
        registry.agents = {"rpa": rpa_agent(tools=("books@1",))}
        secrets = {"books-token": f"Bearer {token}"}
        revealed: list[str] = []

        async def reveal(name: str) -> str:
            revealed.append(name)
            if name not in secrets:
                raise NotFound(f"no secret {name!r}")
            return secrets[name]

        def invoker(reveal_fn) -> ToolInvoker:
            return ToolInvoker(
                registry, events, AgentRedactors(), Gate(audit_pb2.APPROVAL_STATE_REJECTED), MemoryResultCache(),
                http_timeout_s=5.0, credentials=Credentials(reveal_fn),
            )  # fmt: skip

        reqctx.set_current(reqctx.new_context(reqctx.Identity(agent="rpa", user="alice")))
        with_credential = invoker(reveal)
        outcome = await with_credential.invoke(ToolCall("books", "ledger.read", {"ledger": "2024"}))
        assert outcome.result["balance"] == 1200 and server.calls == [("ledger.read", {"ledger": "2024"})]
        await with_credential.invoke(ToolCall("books", "ledger.read", {"ledger": "2025"}))
        assert revealed == ["books-token"]  # read once, then kept for the TTL
        secrets.clear()
        with pytest.raises(Unavailable, match=r"needs its credential 'books-token', which is not set"):
            await invoker(reveal).invoke(ToolCall("books", "ledger.read", {"ledger": "2026"}))
        refused_before = server.refused
        with pytest.raises(Unavailable, match=r"failed \(HTTP 401\).*refused the credentials"):
            tool.ClearField("credential")  # a tool that sends no credential is refused upstream
            await invoker(reveal).invoke(ToolCall("books", "ledger.read", {"ledger": "2027"}))
        assert server.refused > refused_before
        assert token not in "".join(str(e) for e in events.audit + events.usage)
    finally:
        await server.stop()
