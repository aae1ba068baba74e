"""An MCP tool call's story, read back from the real audit service: a ledger MCP server (built
with the `mcp` SDK) imported into the catalog as tool `books`; its `ledger.delete` over MCP
waits for an approval, bob rejects it with `harness approvals reject`, the agent gets the
rejection as a tool error, and `harness audit lineage` shows user -> agent@version -> step ->
tool call -> approval. The router's real event shipper and approval client talk to an audit
service on port 0 over mTLS (the router's certificate); the MCP front door is called by the
official `mcp` SDK client (agent identity as Envoy forwards it, the user's bearer token)."""

from __future__ import annotations

import asyncio
import secrets

import grpc
import httpx2
import pytest
from harness.audit.v1 import audit_pb2_grpc
from harness.registry.v1 import registry_pb2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from prometheus_client import CollectorRegistry
from starlette.routing import Route

from services.common.config import TlsFiles
from services.common.http_server import start_http_server
from services.common.identity import Authenticator, JwtVerifier
from services.common.mcp_client import catalog_actions, list_tools
from services.common.server import open_channel
from services.router.events import EventShipper
from services.router.mcp_front import PATH, McpFrontDoor
from services.router.openai_http.app import OpenAIFrontDoor
from services.router.outbox import Outbox
from services.router.privacy import AgentRedactors
from services.router.result_cache import MemoryResultCache
from services.router.tools import AuditApprovals, ToolInvoker
from tests.helpers.grpc import agent_metadata
from tests.helpers.mcp_ledger import McpLedger
from tests.integration.test_cli_approvals import cli  # noqa: F401 (the CLI fixture)
from tests.integration.test_router_tools import FakeRegistry, rpa_agent

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def opened(tmp_path, test_auth):  # replaces test_cli_approvals' fixture: no approvals up front
    from tests.helpers.audit import start_tls_audit

    mesh = await start_tls_audit(tmp_path, test_auth, certs_dir=tmp_path / "harness" / "certs")
    yield mesh, []
    await mesh.close()


async def test_an_mcp_tool_calls_lineage_is_in_the_audit_log(opened, cli, test_auth, mint_token, tmp_path):  # noqa: F811
    mesh, _ = opened
    audit_channel = open_channel(f"127.0.0.1:{mesh.running.port}", mesh.tls("router"))
    events = EventShipper(
        audit_channel, grpc.aio.insecure_channel("127.0.0.1:1"), CollectorRegistry(),
        Outbox(str(tmp_path / "outbox.db")), linger_s=0.01,
    )  # fmt: skip
    events.start()
    server = await McpLedger().start()
    tool = registry_pb2.Tool(name="books", version="1", endpoint=server.endpoint)
    tool.actions.extend(catalog_actions(await list_tools(server.endpoint, timeout_s=10)))
    registry = FakeRegistry(tool)
    registry.agents = {"rpa": rpa_agent(tools=("books@1",))}
    invoker = ToolInvoker(
        registry, events, AgentRedactors(), AuditApprovals(audit_pb2_grpc.AuditStub(audit_channel)),
        MemoryResultCache(), default_approval_wait_s=60.0,
    )  # fmt: skip
    auth = Authenticator(test_auth, JwtVerifier.from_config(test_auth), None)
    front = McpFrontDoor(invoker, auth, progress_interval_s=0.2)
    await front.start()
    http = await start_http_server(
        OpenAIFrontDoor(None, auth).app([Route(PATH, front)]), "127.0.0.1", 0, TlsFiles()
    )  # type: ignore[arg-type]
    trace = secrets.token_hex(16)
    headers = {
        **dict(agent_metadata("rpa", mint_token("alice"))),
        "traceparent": f"00-{trace}-00f067aa0ba902b7-01",
        "x-harness-session-id": "case-77",
        "x-harness-step-id": "step-4",
    }
    try:

        async def delete() -> object:
            client = httpx2.AsyncClient(headers=headers, timeout=90)
            async with (
                client,
                streamable_http_client(f"http://127.0.0.1:{http.port}{PATH}", http_client=client) as s,
            ):
                async with ClientSession(*s) as session:
                    await session.initialize()
                    listed = {t.name: t for t in (await session.list_tools()).tools}
                    assert listed["books.ledger.read"].input_schema["required"] == ["ledger"]
                    return await session.call_tool("books.ledger.delete", {"ledger": "FY2024"})

        call = asyncio.create_task(delete())
        approval_id = ""
        for _ in range(300):  # the pending approval, as an approver lists it
            listed = await cli("approvals", "list", "--state", "pending", "--ids")
            if listed.rc == 0 and listed.out.split():
                approval_id = listed.out.split()[0]
                break
            await asyncio.sleep(0.1)
        assert approval_id, "the delete never asked for an approval"
        rejected = await cli("approvals", "reject", approval_id, "--comment", "never delete a ledger")
        assert rejected.rc == 0, rejected.err
        result = await asyncio.wait_for(call, 60)
        text = " ".join(c.text for c in result.content)
        assert result.is_error and "rejected by bob: never delete a ledger" in text
        assert server.calls == []  # the MCP server never saw the delete
        await events.drain(10.0)

        tree = await cli("audit", "lineage", "--trace", trace, user="carol")
        assert tree.rc == 0, tree.err
        lines = tree.out.splitlines()

        def at(fragment: str) -> int:
            found = [i for i, line in enumerate(lines) if fragment in line]
            assert found, f"{fragment!r} not in:\n{tree.out}"
            return found[0]

        def depth(i: int) -> int:
            return len(lines[i]) - len(lines[i].lstrip(" |`-"))

        user, agent, step = at("user:alice"), at("agent:rpa@v1"), at("step:step-4")
        tool_call, approval = (
            at("tool:books@1 ledger.delete deny"),
            at("approval:books@1 ledger.delete deny by:bob"),
        )
        assert user < agent < step < tool_call < approval, tree.out
        assert depth(user) < depth(agent) < depth(step) < depth(tool_call) < depth(approval), tree.out
    finally:
        await http.stop(1)
        await front.stop()
        await server.stop()
        await audit_channel.close()
